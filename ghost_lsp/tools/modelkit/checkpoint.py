"""Training checkpoints that a later run can trust: bf16 safetensors written atomically, each
file's sha256 kept beside it (train_state.json, the model manifest), and a loader that refuses
a checkpoint whose bytes changed."""

from __future__ import annotations

import json
from pathlib import Path


def sha256_of(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_weights(state: dict, path: Path) -> str:
    """Write bf16 safetensors atomically; return the file's sha256 (kept in train_state.json)."""
    from safetensors.torch import save_file

    import torch

    tmp = path.with_name(path.name + ".part")
    save_file({k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)
    return sha256_of(path)


def load_resume_state(folder: str | Path) -> tuple[dict, dict]:
    """(pre-decay weights, train state) of a run to continue; refuses a corrupt or altered checkpoint."""
    from safetensors.torch import load_file

    folder = Path(folder)
    state_file = folder / "train_state.json"
    weights = folder / "stable.safetensors"
    if not state_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{folder}: no checkpoint to resume (needs stable.safetensors and train_state.json)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{state_file}: corrupt train state ({e})") from None
    want = state.get("stable_sha256")
    if want and sha256_of(weights) != want:
        raise ValueError(f"{weights}: sha256 does not match train_state.json: the checkpoint is corrupt or was "
                         "changed; refusing to resume from it")
    try:
        return load_file(str(weights)), state
    except Exception as e:  # safetensors raises its own error types for a truncated file
        raise ValueError(f"{weights}: unreadable checkpoint ({e})") from None


def source_checkpoint(model_dir: str | Path) -> Path | None:
    """The PyTorch checkpoint a model folder was exported from, as its manifest names it
    (`info.source.hf_dir`): relative to the model folder (a shipped `checkpoint/`), else to the
    checkout (a recipe's runs/), else absolute. None when the manifest names none or it is gone."""
    from ghost_lsp.engine.manifest import Manifest
    from ghost_lsp.paths import REPO

    try:
        info = Manifest.load(model_dir).info or {}
    except (ValueError, OSError):
        return None
    src = (info.get("source") or {}).get("hf_dir") if isinstance(info, dict) else None
    if not src:
        return None
    for cand in (Path(model_dir) / src, REPO / src, Path(src)):
        if (cand / "config.json").is_file():
            return cand.resolve()
    return None
