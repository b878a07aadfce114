"""The `ghost-lsp learn` command line: a low-priority, one-thread, time-boxed run that Ctrl-C
stops cleanly (the first Ctrl-C ends training and still measures and installs what was learnt
if it is better; a second one aborts, installing nothing).

Exit status: 0 when it ran (installed, or kept the model it had and said why), 1 when it
could not learn (no checkpoint, no code, a failed export check), 2 without the training extra,
130 when aborted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

NEEDS_TRAIN = 'ghost-lsp learn needs the training extra: pip install "ghost-lsp[train]"'
HELP = ("fine-tune the model on a project's code (held-out check, installed per project for the server; "
        "needs the [train] extra)")


def add_parser(sub) -> None:
    p = sub.add_parser("learn", help=HELP, description=HELP)
    p.add_argument("dir", nargs="?", default=".", metavar="DIR", help="the project (workspace root; default: .)")
    p.add_argument("--minutes", type=float, default=3.0, help="training budget, wall clock (default 3)")
    p.add_argument("--out", metavar="MODEL_DIR",
                   help="write the model folder here (default: the project's learned model under "
                        "$XDG_DATA_HOME/ghost-lsp/learned/, where `ghost-lsp serve` finds it)")
    p.add_argument("--model", metavar="BASE_DIR",
                   help="the model to start from (default: $GHOST_LSP_MODEL or the shipped model)")
    p.add_argument("--config", metavar="FILE", help="settings file: its `exclude` globs apply (with .ghostignore)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="one more glob to keep out (repeatable; added to the settings' exclude and .ghostignore)")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="peak learning rate (default 1e-4: half the shipped model's last rate; higher over-fits a small project)")
    p.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)  # tests: a step count, not minutes
    p.add_argument("--min-agreement", type=float, default=0.9, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_learn)


def _low_priority() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    try:
        os.nice(10)
    except (AttributeError, OSError):  # not POSIX, or already as low as allowed
        pass


def cmd_learn(args: argparse.Namespace) -> int:
    _low_priority()
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        print(NEEDS_TRAIN, file=sys.stderr)
        return 2
    import logging

    from transformers.utils import logging as hf_logging

    logging.basicConfig(level=logging.ERROR)  # the exporters' and quantizer's advice is not for the user
    hf_logging.set_verbosity_error()
    from ghost_lsp.settings.core import default_model_dir, from_dict, learned_dir, load_file
    from ghost_lsp.tools.learn.adapt import LearnError, exclusive, learn

    data, warnings = load_file(args.config) if args.config else ({}, [])
    settings, more = from_dict(data)
    for w in warnings + more:
        print(f"ghost-lsp learn: {w}", file=sys.stderr)
    root = Path(args.dir).expanduser()
    out = Path(args.out).expanduser() if args.out else learned_dir(root)
    base = Path(args.model).expanduser() if args.model else default_model_dir()
    if out.resolve() == base.resolve():
        print("ghost-lsp learn: --out is the base model's folder; the learned model needs its own", file=sys.stderr)
        return 1
    interrupts = {"n": 0}

    def on_sigint(signum, frame):
        interrupts["n"] += 1
        if interrupts["n"] > 1:
            raise KeyboardInterrupt
        print("\nghost-lsp learn: stopping; measuring what was learnt so far (Ctrl-C again to abort)",
              file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    try:
        with exclusive(out):
            result = learn(root, base, out, minutes=args.minutes, max_steps=args.steps, exclude=tuple(settings.exclude) + tuple(args.exclude),
                           lr=args.lr, min_agreement=args.min_agreement, progress=not args.no_progress,
                           stop=lambda: interrupts["n"] > 0)
    except LearnError as e:
        print(f"ghost-lsp learn: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ghost-lsp learn: aborted; nothing installed, the model in use is unchanged", file=sys.stderr)
        return 130
    except OSError as e:
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _failed(e)
        print(f"ghost-lsp learn: the disk is full ({e}); the partial model was removed, nothing installed, the "
              f"model in use is unchanged (a learn needs a few times the model folder's size free beside {out})",
              file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a failed run installs nothing: say so in one line
        return _failed(e)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    print(f"ghost-lsp learn: {result.message}")
    return 0


def _failed(e: BaseException) -> int:
    print(f"ghost-lsp learn: failed ({type(e).__name__}: {e}); nothing installed, the model in use is "
          "unchanged", file=sys.stderr)
    return 1


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
