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
    import ghost_lsp.feedback.store as mod

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
    assert read(path, "SELECT value FROM meta WHERE key='schema_version'") == [(str(mod.SCHEMA_VERSION),)]
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


def _unwritable_dir(tmp_path):
    # /proc takes no new files, whoever asks: root included (chmod would not stop root).
    assert os.path.isdir("/proc/self"), "needs Linux /proc"
    return "/proc", "/proc/f.db"


def _db_is_a_directory(tmp_path):
    (tmp_path / "f.db").mkdir()
    return str(tmp_path / "f.db"), str(tmp_path / "f.db")


@pytest.mark.parametrize("where", [_unwritable_dir, _db_is_a_directory])
def test_unwritable_path_disables_with_one_warning(tmp_path, where, caplog):
    shown_in_warning, path = where(tmp_path)
    store = FeedbackStore(path)
    assert not store.enabled
    assert shown_in_warning in store.warning
    store.record_shown(completion(), REQ)  # no-ops, no exception
    store.record_event("s1", "accepted")
    assert store.flush(0.1) is False
    store.close()
    assert [r.getMessage() for r in caplog.records if "feedback database" in r.getMessage()] == [store.warning]


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


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE suggestions (id TEXT PRIMARY KEY, time FLOAT, uri_hash TEXT, language TEXT, model_id TEXT,
  prompt_template TEXT, prompt_hash TEXT, text TEXT, latency_ms FLOAT, cut_reasons TEXT, score FLOAT);
CREATE TABLE events (id INTEGER PRIMARY KEY, suggestion_id TEXT, kind TEXT, time FLOAT, detail TEXT);
INSERT INTO suggestions VALUES ('old', 1.0, 'h', 'python', 'm', 'plain@1', 'ph', 'x = 1', 3.0, '[]', -0.5);
INSERT INTO events VALUES (1, 'old', 'accepted', 2.0, NULL);
"""


def test_version_1_file_is_migrated_in_place(tmp_path):
    import ghost_lsp.feedback.store as mod

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.close()
    store = FeedbackStore(path)
    assert store.enabled, store.warning
    assert store.install_id and len(store.install_id) == 32
    c = completion("new")
    c.variant, c.prompt = "B", "def f():\n    "
    store.record_shown(c, REQ)
    store.record_event("new", "shown")
    store.close()
    assert read(path, "SELECT value FROM meta WHERE key='schema_version'") == [(str(mod.SCHEMA_VERSION),)]
    assert read(path, "SELECT id, text, variant, prompt FROM suggestions ORDER BY time") == [
        ("old", "x = 1", None, None), ("new", "return x", "B", "def f():\n    ")]
    assert read(path, "SELECT suggestion_id, kind FROM events ORDER BY id") == [("old", "accepted"), ("new", "shown")]
    # reopening a current file changes nothing (the install id stays)
    first = FeedbackStore(path)
    iid = first.install_id
    first.close()
    again = FeedbackStore(path)
    assert again.install_id == iid
    again.close()


def test_file_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT); INSERT INTO meta VALUES ('schema_version', '99');")
    conn.close()
    store = FeedbackStore(path)
    assert not store.enabled and "newer" in store.warning


def test_secrets_are_redacted_before_the_file_and_prompts_can_be_left_out(tmp_path):
    path = tmp_path / "f.db"
    store = FeedbackStore(path)
    c = completion("s1")
    c.text = 'API_KEY = "sk-proj-Ab3De5Gh7Jk9Mn1Pq3St5Vw7Yz9Bc1Df3Gh5Jk7"'
    c.prompt = "DB_PASSWORD=correcthorsebattery\nAPI_KEY = "
    store.record_shown(c, REQ)
    c2 = completion("s2")
    c2.prompt = "secret prompt"
    store.record_shown(c2, REQ, store_prompt=False)
    store.record_event("s1", "survived", {"final_text": "token = 'ghp_1A2b3C4d5E6f7G8h9I0jK1lM2nO3pQ4rS5tU'"})
    store.close()
    raw = path.read_bytes() + (path.with_name("f.db-wal").read_bytes() if path.with_name("f.db-wal").exists() else b"")
    for secret in (b"sk-proj-Ab3De5", b"correcthorsebattery", b"ghp_1A2b3C4d", b"secret prompt"):
        assert secret not in raw
    assert read(path, "SELECT prompt, prompt_hash FROM suggestions WHERE id='s2'") == [(None, "abc")]
    assert "[REDACTED:" in read(path, "SELECT text FROM suggestions WHERE id='s1'")[0][0]
