"""One training step and the distillation losses, shared by the trainer (train.py) and
`bench --only train` (tools/bench/train_speed.py), so the benchmark times exactly what training runs.

A step: forward under bf16 autocast, cross-entropy in fp32, an optional distillation term
mixed in as `alpha * KL + (1 - alpha) * CE`, backward, gradient clipping at 1.0, optimizer step.
"""

from __future__ import annotations

from typing import Callable


def kl_full(logits, t_logits, temperature: float):
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)) over the whole vocabulary (teacher run online)."""
    import torch

    T = temperature
    v = logits.shape[-1]
    return torch.nn.functional.kl_div(
        torch.log_softmax(logits / T, -1).reshape(-1, v), torch.log_softmax(t_logits / T, -1).reshape(-1, v),
        log_target=True, reduction="batchmean") * T * T


def kl_topk(logits, t_ids, t_logits, t_lse, temperature: float):
    """T² · KL(p ‖ q) over the teacher's k best tokens plus one class for all the others, from
    cached top-k logits and their log-sum-exp at T: p_i = exp(t_i/T − lse) exactly, p_tail = 1 − Σ p_i,
    and q the student's softmax(z/T) read at the same tokens, q_tail its mass elsewhere."""
    import torch

    T = temperature
    s_logp = torch.log_softmax(logits / T, -1).gather(-1, t_ids)
    t_logp = t_logits / T - t_lse.unsqueeze(-1)
    t_p = t_logp.exp()
    t_tail = (1 - t_p.sum(-1)).clamp_min(1e-6)
    s_tail = (1 - s_logp.exp().sum(-1)).clamp_min(1e-6)
    kl = (t_p * (t_logp - s_logp)).sum(-1) + t_tail * (t_tail.log() - s_tail.log())
    return kl.mean() * T * T


def train_step(model, forward, opt, inp, tgt, *, bf16: bool = True, distill: Callable | None = None,
               alpha: float = 0.7):
    """Run one optimizer step on (inputs, targets); returns (loss, cross-entropy) tensors.
    `distill(logits) -> KL tensor` adds the distillation term."""
    import torch

    with torch.autocast(inp.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = forward(inp).float()
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        loss = ce if distill is None else alpha * distill(logits) + (1 - alpha) * ce
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss, ce
