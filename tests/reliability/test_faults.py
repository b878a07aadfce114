"""Faults through the real server: each gives a clear message once (not per keystroke),
the server keeps serving, and it recovers by itself when the fault goes away.

Covered elsewhere, not repeated here: the remote engine timing out, refusing, answering
garbage or 429 (tests/test_remote_engine.py: test_dead_port_fails_fast_then_circuit_opens,
test_silent_and_garbage_servers_do_not_hang, test_retries_after_429_only_within_the_deadline;
tests/e2e/test_remote_e2e.py), kill -9 mid-write (tests/e2e/test_feedback_e2e.py::
test_kill_9_mid_burst_loses_no_committed_event), an unwritable or corrupt file at start
(tests/test_feedback_store.py).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from ghost_lsp.feedback import FeedbackStore
from ghost_lsp.feedback import store as store_mod
from tests.reliability.wire import FIGURES, PROBE_OPTIONS, PROBE_TEXT, Wire

URI = "file:///faults/f.py"


def _items(got):
    return (got or {}).get("result") and got["result"]["items"]


def test_model_missing_or_garbage_at_start_then_fixed(model_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    onnx = broken / "model.onnx"
    good = onnx.read_bytes()
    onnx.write_bytes(b"this is not an onnx file" * 10)  # garbage
    w = Wire(broken, tmp_path / "f.db")
    try:
        w.initialize(PROBE_OPTIONS)
        w.open(URI, PROBE_TEXT)
        for _ in range(5):  # keystrokes while broken: answered (empty), one message in all
            got = w.inline(URI, 5, 11)
            assert got is not None and got.get("result") is None, got
        shown = [m for m in w.messages_shown() if "model not loaded" in m]
        assert len(shown) == 1 and str(broken) in shown[0], w.messages_shown()
        onnx.write_bytes(good[: len(good) // 2])  # truncated: still broken
        time.sleep(5.5)
        assert w.inline(URI, 5, 11).get("result") is None
        onnx.write_bytes(good)  # fixed: the server retries on its own
        time.sleep(5.5)
        got = w.inline(URI, 5, 11, timeout=30)
        assert _items(got), (got, w.log_text()[-2000:])
        assert len([m for m in w.messages_shown() if "model not loaded" in m]) == 1
        FIGURES["faults_survived"] += 3
    finally:
        w.close()


def test_model_file_damaged_while_running_keeps_serving(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    w = Wire(copy, tmp_path / "f.db")
    try:
        w.initialize(PROBE_OPTIONS)
        w.open(URI, PROBE_TEXT)
        before = _items(w.inline(URI, 5, 11, timeout=30))
        assert before
        (copy / "model.onnx").write_bytes(b"\0" * 100)  # the loaded session is in memory
        (copy / "tokenizer.json").unlink()
        assert _items(w.inline(URI, 5, 11))[0]["insertText"] == before[0]["insertText"]
        FIGURES["faults_survived"] += 2
    finally:
        w.close()


def _count(db, sql="SELECT count(*) FROM events"):
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def _emit(store, n, tag):
    for i in range(n):
        store.record_event(f"{tag}-{i}", "shown-test")


@pytest.fixture
def fast_retry(monkeypatch):
    monkeypatch.setattr(store_mod, "RETRY_S", 0.2)


def test_db_locked_by_another_process_then_released(tmp_path, fast_retry, caplog):
    db = tmp_path / "f.db"
    store = FeedbackStore(db)
    locker = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2]))"),
        str(db), "8"], stdout=subprocess.PIPE)
    assert locker.stdout.readline().strip() == b"locked"
    _emit(store, 50, "locked")  # the writer's 5 s busy timeout expires: rows are kept
    time.sleep(6)
    assert store.write_error and "locked" in store.write_error
    locker.wait(10)
    assert store.flush(10)
    deadline = time.monotonic() + 10
    while store.write_error and time.monotonic() < deadline:
        time.sleep(0.1)
    store.close()
    assert _count(db) == 50  # nothing lost
    assert sum("write failed" in r.message for r in caplog.records) == 1
    FIGURES["faults_survived"] += 1
    FIGURES["events_lost"] += 50 - _count(db)


def test_db_deleted_while_running_starts_a_new_file(tmp_path, fast_retry):
    db = tmp_path / "f.db"
    store = FeedbackStore(db)
    _emit(store, 10, "a")
    assert store.flush(5)
    for p in tmp_path.glob("f.db*"):
        p.unlink()
    _emit(store, 10, "b")
    assert store.flush(5)
    store.close()
    assert _count(db) == 10  # the rows after the deletion are in the new file
    FIGURES["faults_survived"] += 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions; the tmpfs test covers a full disk")
def test_db_made_read_only_then_writable(tmp_path, fast_retry):
    db = tmp_path / "f.db"
    store = FeedbackStore(db)
    _emit(store, 5, "a")
    assert store.flush(5)
    os.chmod(tmp_path, 0o500)
    for p in tmp_path.glob("f.db*"):
        os.chmod(p, 0o400)
    try:
        _emit(store, 5, "b")
        store.flush(5)
    finally:
        os.chmod(tmp_path, 0o700)
        for p in tmp_path.glob("f.db*"):
            os.chmod(p, 0o600)
    _emit(store, 5, "c")
    assert store.flush(5)
    store.close()
    assert _count(db) == 15
    FIGURES["faults_survived"] += 1


def test_db_corrupted_while_running_keeps_serving(tmp_path, fast_retry):
    db = tmp_path / "f.db"
    store = FeedbackStore(db)
    _emit(store, 5, "a")
    assert store.flush(5)
    with open(db, "r+b") as f:  # overwrite the header and the first pages
        f.write(b"garbage!" * 4096)
    _emit(store, 5, "b")
    store.flush(5)  # returns: the writer never blocks the caller
    assert store.enabled
    store.close(timeout=2)
    FIGURES["faults_survived"] += 1


def _tiny_tmpfs(path) -> bool:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_disk_full_then_space_freed(tmp_path, fast_retry, caplog):
    mnt = tmp_path / "small"
    if not _tiny_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (needs root); a full disk is then untested")
    try:
        filler = mnt / "filler"
        store = FeedbackStore(mnt / "f.db")
        with open(filler, "wb", buffering=0) as f:  # fill the rest of the disk
            try:
                while True:
                    f.write(b"x" * 1024)
            except OSError:
                pass
        for i in range(40):
            store.record_event(f"full-{i}", "shown-test", {"pad": "y" * 8000})
        deadline = time.monotonic() + 20
        while not store.write_error and time.monotonic() < deadline:
            store.flush(1)
        assert store.enabled and store.write_error, (store.warning, "the disk was not full")
        filler.unlink()  # space comes back: the kept rows are written
        deadline = time.monotonic() + 10
        while store.write_error and time.monotonic() < deadline:
            store.flush(1)
        store.close()
        n = _count(mnt / "f.db")
        assert n == 40, n
        FIGURES["faults_survived"] += 1
        FIGURES["events_lost"] += 40 - n
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
