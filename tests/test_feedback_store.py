import json
import os
import sqlite3
import threading

import pytest

from ghost_lsp.feedback import FeedbackStore, uri_hash
from ghost_lsp.types import Candidate, Completion, CompletionRequest

REQ = CompletionRequest(uri="file:///home/me/secret/project/a.py", version=3, line=1, character=4)


def completion(id_="s1"):
    return Completion(id=id_, text="return x", candidate=Candidate(text="return x", logprobs=[-0.5, -1.5]),
                      cut_reasons=["end_of_line"], timings_ms={"total_ms": 12.5},
                      prompt_template="plain@1", prompt_hash="abc", model_id="m:int8")


def read(path, sql):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_rows_written_off_thread_in_wal_mode(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "feedback.db"
    store = FeedbackStore(path)
    assert store.enabled and store.warning is None

    writer_threads = set()
    original = store._write

    def spy(rows):
        writer_threads.add(threading.current_thread().name)
        original(rows)

    monkeypatch.setattr(store, "_write", spy)
    store.record_shown(completion(), REQ)
    store.record_event("s1", "accepted", {"how": "command"})
    assert store.flush(5)
    assert writer_threads == {"ghost-feedback-writer"}

    assert read(path, "PRAGMA journal_mode") == [("wal",)]
    assert read(path, "SELECT value FROM meta WHERE key='schema_version'") == [("1",)]
    (row,) = read(path, "SELECT id, uri_hash, language, model_id, prompt_template, text, latency_ms, cut_reasons, score FROM suggestions")
    assert row == ("s1", uri_hash(REQ.uri), "python", "m:int8", "plain@1", "return x", 12.5, '["end_of_line"]', -1.0)
    # privacy: the raw path is nowhere in the file
    store.close()
    assert b"secret/project" not in path.read_bytes()
    (ev,) = read(path, "SELECT suggestion_id, kind, detail FROM events")
    assert ev[:2] == ("s1", "accepted") and json.loads(ev[2]) == {"how": "command"}


def test_reopen_keeps_rows(tmp_path):
    path = tmp_path / "f.db"
    s = FeedbackStore(path)
    s.record_event("a", "accepted")
    s.close()
    s = FeedbackStore(path)
    s.record_event("b", "accepted")
    s.close()
    assert read(path, "SELECT suggestion_id FROM events ORDER BY id") == [("a",), ("b",)]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_path_disables_with_one_warning(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        store = FeedbackStore(locked / "deeper" / "f.db")
        assert not store.enabled
        assert str(locked) in store.warning
        store.record_shown(completion(), REQ)  # no-ops, no exception
        store.record_event("s1", "accepted")
        assert store.flush(0.1) is False
        store.close()
    finally:
        locked.chmod(0o700)


def test_path_under_a_file_disables(tmp_path):
    (tmp_path / "file").write_text("x")
    store = FeedbackStore(tmp_path / "file" / "f.db")
    assert not store.enabled and store.warning


def test_corrupt_file_warns_not_crash(tmp_path):
    path = tmp_path / "f.db"
    path.write_bytes(b"this is not a database" * 100)
    store = FeedbackStore(path)
    assert not store.enabled
    assert "f.db" in store.warning
    store.record_event("x", "accepted")
    store.close()
    assert path.read_bytes().startswith(b"this is not a database")  # left for the user to inspect


def test_disabled_by_setting(tmp_path):
    store = FeedbackStore(tmp_path / "f.db", enabled=False)
    assert not store.enabled and store.warning is None
    assert not (tmp_path / "f.db").exists()


def test_full_queue_drops_instead_of_blocking(tmp_path, monkeypatch):
    import ghost_lsp.feedback.store as mod

    store = FeedbackStore(tmp_path / "f.db")
    gate = threading.Event()
    original = store._write
    monkeypatch.setattr(store, "_write", lambda rows: (gate.wait(5), original(rows)))
    store.record_event("first", "accepted")  # the writer takes it and waits at the gate
    for i in range(mod.QUEUE_SIZE + mod.BATCH + 50):  # the writer may hold a batch
        store.record_event(str(i), "accepted")
    assert store.dropped > 0
    gate.set()
    assert store.flush(5)
    store.close()
