"""`ghost-lsp stats --plot FILE`: acceptance over time per A/B variant, drawn from a real
feedback file; a clear error without matplotlib or without data."""

import json
import sqlite3
import sys

from ghost_lsp.cli import main
from ghost_lsp.feedback import FeedbackStore
from ghost_lsp.feedback.report import load, over_time
from ghost_lsp.types import Candidate, Completion, CompletionRequest

REQ = CompletionRequest(uri="file:///w/a.py", version=1, line=0, character=0)
DAY = 86400.0


def make_db(path):
    """Variant A improves from 20 % to 80 % acceptance over four days; B stays at 50 %."""
    store = FeedbackStore(path)
    for day in range(4):
        for i in range(20):
            for variant, accepted in (("A", 4 + 4 * day), ("B", 10)):
                sid = f"{variant}{day}-{i}"
                store.record_shown(Completion(id=sid, text="return x", candidate=Candidate(text="return x"),
                                              timings_ms={"total_ms": 10.0 + day}, model_id="m", variant=variant),
                                   REQ)
                store.record_event(sid, "accepted" if i < accepted else "rejected")
    store.close()
    conn = sqlite3.connect(path)
    with conn:  # spread the rows over four days (the store stamps them now)
        conn.execute("UPDATE suggestions SET time = 1.7e9 + CAST(substr(id, 2, 1) AS REAL) * ? "
                     "+ CAST(substr(id, 4) AS REAL) * 60", (DAY,))
    conn.close()
    return path


def test_over_time_buckets_follow_the_data(tmp_path):
    series = over_time(load(make_db(tmp_path / "f.db")), buckets=4)
    assert [round(p["acceptance_rate"], 2) for p in series["A"]] == [0.2, 0.4, 0.6, 0.8]
    assert [round(p["acceptance_rate"], 2) for p in series["B"]] == [0.5] * 4
    assert sum(p["shown"] for p in series["A"]) == 80


def test_stats_plot_writes_a_png(tmp_path, capsys):
    db, png = make_db(tmp_path / "f.db"), tmp_path / "acc.png"
    assert main(["stats", "--db", str(db), "--plot", str(png), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert set(out["over_time"]) == {"A", "B"}


def test_plot_without_matplotlib_or_data_is_a_clear_error(tmp_path, capsys, monkeypatch):
    db = make_db(tmp_path / "f.db")
    assert main(["stats", "--db", str(db), "--since", "1d", "--plot", str(tmp_path / "y.png")]) == 1
    assert "nothing to plot" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extra were not installed
    assert main(["stats", "--db", str(db), "--plot", str(tmp_path / "x.png")]) == 1
    assert "pip install 'ghost-lsp[eval]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()
