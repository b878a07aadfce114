"""The PyTorch side of the benchmarks: where a model folder's checkpoint is, and a quiet export."""

from __future__ import annotations

import logging
from pathlib import Path

from ghost_lsp.paths import runs_dir

DEFAULT_RUNS = runs_dir() / "ghost-py-small"  # the recipe's work folder (models/recipes/ghost-py-small.toml)


def hf_dir_for(model_dir: Path, explicit: str | None) -> tuple[Path | None, str]:
    """The PyTorch checkpoint of a model folder: --hf, the manifest's source (a shipped checkpoint/), runs/student."""
    from ghost_lsp.tools.modelkit.checkpoint import source_checkpoint

    cands = []
    if explicit:
        cands.append(Path(explicit))
    else:
        src = source_checkpoint(model_dir)
        if src is not None:
            return src, ""
        cands += [model_dir / "checkpoint", DEFAULT_RUNS / "student"]
    for c in cands:
        if (c / "config.json").is_file():
            return c, ""
    return None, "no PyTorch checkpoint (config.json) in " + ", ".join(map(str, cands))


def export_quiet(hf: Path, out: Path, **kw) -> dict:
    """export_onnx without its tracer warnings and quantizer advice on the bench's output."""
    import warnings

    from ghost_lsp.tools.modelkit.export import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            return export_onnx(hf, out, **kw)
        finally:
            logging.disable(logging.NOTSET)
