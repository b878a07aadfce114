"""Loss against training tokens, one line per run: `ghost-lsp model plot RECIPE [--run DIR ...] --out PNG`.

Reads each run folder's `train_log.jsonl` (validation loss every `eval_every` steps, with the
cumulative tokens of a resumed run) and draws them on one chart, for the model card.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "train_log.jsonl"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut by an interrupted run
    return rows


def plot_runs(runs: dict[str, str | Path], out: str | Path, title: str = "") -> Path:
    """Draw validation loss vs tokens for each labelled run folder into `out` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, folder in runs.items():
        rows = [r for r in read_log(folder) if r.get("val_loss") is not None]
        if not rows:
            continue
        xs = [r.get("cumulative_tokens", r["tokens"]) / 1e6 for r in rows]
        ax.plot(xs, [r["val_loss"] for r in rows], marker=".", label=label)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title or "validation loss vs training tokens")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
