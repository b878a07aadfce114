"""Eval history: one row per eval run in SQLite, a table of them, and regression checks.

The record (version RECORD_VERSION) is: kind (humaneval, nextline, holes, compare), date
(UTC), model id and folder, prompt template id, git commit of the code, settings, figures
(`metrics`) and free-form details. The default file sits next to the feedback log
(`evals.db` beside feedback.db); every eval command takes `--history FILE`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ghost_lsp.paths import REPO

RECORD_VERSION = 1

# Direction of each figure: +1 higher is better, -1 lower is better. Latencies compare relatively.
DIRECTION = {"exact_match": 1, "edit_similarity": 1, "pass_rate": 1, "loop_rate": -1, "nonsense_rate": -1,
             "drop_rate": -1, "empty_rate": -1, "syntax_error_rate": -1, "timeout_rate": -1,
             "latency_p50_ms": -1, "latency_p95_ms": -1}
# Shown in the history table, in this order, when a run has them.
TABLE_METRICS = ("pass@1", "pass@10", "exact_match", "edit_similarity", "pass_rate", "loop_rate",
                 "nonsense_rate", "drop_rate", "latency_p50_ms", "latency_p95_ms")


def direction(metric: str) -> int:
    if metric.startswith("pass@"):
        return 1
    return DIRECTION.get(metric, 0)


@dataclass
class Record:
    kind: str
    model_id: str
    metrics: dict
    model_dir: str = ""
    prompt_template: str = ""
    settings: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    git_commit: str = ""
    date: str = ""
    id: int | None = None
    version: int = RECORD_VERSION


def default_history_path() -> Path:
    env = os.environ.get("GHOST_LSP_EVAL_HISTORY")
    if env:
        return Path(env).expanduser()
    from ghost_lsp.settings.core import default_db_path

    return default_db_path().with_name("evals.db")


def git_commit(repo: Path | None = None) -> str:
    """HEAD of the checkout this code runs from, with "+dirty" for uncommitted changes; "" outside git."""
    repo = repo or REPO
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return head.stdout.strip() + ("+dirty" if dirty else "")


class History:
    """The runs table in one SQLite file (WAL, so a report can read while an eval writes)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("""CREATE TABLE IF NOT EXISTS runs (
                id INTEGER PRIMARY KEY AUTOINCREMENT, version INTEGER, kind TEXT, date TEXT, model_id TEXT,
                model_dir TEXT, prompt_template TEXT, git_commit TEXT, settings TEXT, metrics TEXT,
                details TEXT)""")
            self.db.commit()
        except (OSError, sqlite3.Error) as e:
            raise ValueError(f"eval history {self.path}: cannot open ({e})") from None

    def close(self) -> None:
        self.db.close()

    def add(self, rec: Record) -> Record:
        rec.date = rec.date or datetime.now(timezone.utc).isoformat(timespec="seconds")
        rec.git_commit = rec.git_commit or git_commit()
        cur = self.db.execute(
            "INSERT INTO runs (version, kind, date, model_id, model_dir, prompt_template, git_commit, settings,"
            " metrics, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.version, rec.kind, rec.date, rec.model_id, rec.model_dir, rec.prompt_template, rec.git_commit,
             json.dumps(rec.settings, default=str), json.dumps(rec.metrics), json.dumps(rec.details, default=str)))
        self.db.commit()
        rec.id = cur.lastrowid
        return rec

    def runs(self, kind: str | None = None, limit: int | None = None) -> list[Record]:
        """Runs oldest first (the last `limit` of them)."""
        sql = "SELECT id, version, kind, date, model_id, model_dir, prompt_template, git_commit, settings, " \
              "metrics, details FROM runs"
        args: tuple = ()
        if kind:
            sql, args = sql + " WHERE kind = ?", (kind,)
        rows = self.db.execute(sql + " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else ""), args).fetchall()
        return [Record(id=r[0], version=r[1], kind=r[2], date=r[3], model_id=r[4], model_dir=r[5],
                       prompt_template=r[6], git_commit=r[7], settings=json.loads(r[8] or "{}"),
                       metrics=json.loads(r[9] or "{}"), details=json.loads(r[10] or "{}")) for r in reversed(rows)]

    def get(self, run_id: int) -> Record:
        for r in self.runs():
            if r.id == run_id:
                return r
        raise ValueError(f"eval history {self.path}: no run {run_id}")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"
    return "-" if v is None else str(v)


def format_table(runs: list[Record]) -> str:
    """A Markdown table: one row per run, the known figures as columns."""
    cols = [m for m in TABLE_METRICS if any(m in r.metrics for r in runs)]
    head = ["id", "date", "kind", "model", "prompt", "commit"] + cols
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = [str(r.id), r.date[:16].replace("T", " "), r.kind, r.model_id, r.prompt_template or "-",
                 r.git_commit or "-"] + [_fmt(r.metrics.get(m)) for m in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Change:
    metric: str
    before: float
    after: float
    regressed: bool

    @property
    def delta(self) -> float:
        return self.after - self.before


def compare(a: Record, b: Record, threshold: float = 0.02, latency_threshold: float = 0.5) -> list[Change]:
    """Figures both runs have. A rate regresses when it worsens by more than `threshold`
    (absolute); a latency when it grows by more than `latency_threshold` (relative)."""
    out = []
    for m in sorted(set(a.metrics) & set(b.metrics)):
        x, y, d = a.metrics[m], b.metrics[m], direction(m)
        if not d or not all(isinstance(v, (int, float)) for v in (x, y)):
            continue
        if m.endswith("_ms"):
            worse = y > x * (1 + latency_threshold) and y - x > 1.0
        else:
            worse = (x - y) * d > threshold
        out.append(Change(m, float(x), float(y), worse))
    return out


def format_changes(a: Record, b: Record, changes: list[Change]) -> str:
    lines = [f"run {a.id} ({a.kind}, {a.model_id}, {a.date}) → run {b.id} ({b.kind}, {b.model_id}, {b.date})",
             "| figure | before | after | change | |", "|---|---|---|---|---|"]
    for c in changes:
        lines.append(f"| {c.metric} | {_fmt(c.before)} | {_fmt(c.after)} | {c.delta:+.3f} | "
                     f"{'REGRESSED' if c.regressed else ''} |")
    return "\n".join(lines)


def plot(runs: list[Record], out: str | Path) -> list[str]:
    """Draw each figure over the runs (one panel per figure) into a PNG; returns the figures drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'ghost-lsp[eval]'") from None
    metrics = [m for m in TABLE_METRICS if any(m in r.metrics for r in runs)]
    if not metrics:
        raise ValueError("no figures to plot in these runs")
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.2 * len(metrics)), squeeze=False)
    for ax, m in zip(axes[:, 0], metrics):
        for kind in sorted({r.kind for r in runs}):
            pts = [(r.id, r.metrics[m]) for r in runs if r.kind == kind and m in r.metrics]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=kind)
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("run id")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return metrics


def to_json(rec: Record) -> dict:
    return asdict(rec)
