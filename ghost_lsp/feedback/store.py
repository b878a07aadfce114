"""The feedback log: one SQLite file (WAL) written by one background thread.

The request path only puts rows on a bounded queue; the writer thread drains it in
batches, one transaction per batch. A file that cannot be opened (unwritable path, corrupt
file) disables the store with one warning; a write that fails later (locked, full disk,
read-only, corrupted) keeps its rows in memory (bounded) and retries until the fault goes,
with one warning when it starts and one when it heals; a file deleted while running is
started anew. Suggestions are served throughout.

Privacy: documents are identified by sha256 of their URI, never by the raw path; every
text (suggestion, prompt, event detail) is passed through `redact` on the writer thread,
before it reaches the file.

Schema versions: `MIGRATIONS[n]` takes a version n-1 file to version n, in the same
transaction that records the new version, so an older file is upgraded in place on open and
a crash mid-upgrade leaves it at the old version. A file from a newer ghost-lsp is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from ghost_lsp.feedback.redact import redact
from ghost_lsp.types import Completion, CompletionRequest

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
BATCH = 200
# While writes fail (file locked, disk full, deleted, read-only), rows wait in memory, up
# to this many, and are retried every RETRY_S seconds: the log heals when the fault goes.
MAX_PENDING = 20_000
RETRY_S = 2.0


def _v1(db: sqlite_utils.Database) -> None:
    db.table("suggestions").create(
        {
            "id": str,
            "time": float,
            "uri_hash": str,
            "language": str,
            "model_id": str,
            "prompt_template": str,
            "prompt_hash": str,
            "text": str,
            "latency_ms": float,
            "cut_reasons": str,  # JSON list
            "score": float,
        },
        pk="id",
        if_not_exists=True,
    )
    db.table("events").create(
        {"id": int, "suggestion_id": str, "kind": str, "time": float, "detail": str},
        pk="id",
        if_not_exists=True,
    )
    db.table("events").create_index(["suggestion_id"], if_not_exists=True)


def _v2(db: sqlite_utils.Database) -> None:
    """A/B variant and the (redacted) prompt per suggestion; an install id for stable
    A/B assignment when there is no workspace; indexes for stats and export."""
    cols = {c.name for c in db.table("suggestions").columns}
    for name in ("variant", "prompt"):
        if name not in cols:
            db.table("suggestions").add_column(name, str)
    db.table("suggestions").create_index(["time"], if_not_exists=True)
    db.table("events").create_index(["kind"], if_not_exists=True)
    db.table("meta").insert({"key": "install_id", "value": uuid.uuid4().hex}, pk="key", ignore=True)


MIGRATIONS = {1: _v1, 2: _v2}
SCHEMA_VERSION = max(MIGRATIONS)


def schema_version(db: sqlite_utils.Database) -> int:
    if not db.table("meta").exists():
        return 0
    row = db.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0]) if row is not None else 0
    except ValueError:
        raise ValueError(f"schema_version {row[0]!r} is not a number") from None


def migrate(db: sqlite_utils.Database) -> int:
    """Bring the file to SCHEMA_VERSION (call inside a transaction). Returns the version it had."""
    found = schema_version(db)
    if found > SCHEMA_VERSION:
        raise ValueError(f"schema_version {found} is newer than this ghost-lsp's {SCHEMA_VERSION}; upgrade ghost-lsp")
    db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
    for v in range(found + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[v](db)
        db.table("meta").upsert({"key": "schema_version", "value": str(v)}, pk="key")
    return found


def uri_hash(uri: str) -> str:
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()


@dataclass
class _Flush:
    done: threading.Event


_STOP = object()


class FeedbackStore:
    """Append-only log of shown suggestions and events about them.

    `warning` holds the one message explaining why the store is disabled, if it is.
    """

    def __init__(self, path: str | Path | None, *, enabled: bool = True):
        self.path = Path(path) if path is not None else None
        self.warning: str | None = None
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._db: sqlite_utils.Database | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pending: dict[str, list[dict]] = {"suggestions": [], "events": []}
        self.write_error: str | None = None  # the fault writes are failing on now, if any
        self._inode: int | None = None
        if not enabled or self.path is None:
            return
        try:
            self._db = self._open(self.path)
        except (OSError, sqlite3.Error, ValueError) as e:
            self._disable(f"feedback database {self.path}: {e}; feedback logging is off")
            return
        self._inode = self._file_id()
        self._thread = threading.Thread(target=self._run, name="ghost-feedback-writer", daemon=True)
        self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._db is not None and not self._closed

    @staticmethod
    def _open(path: Path) -> sqlite_utils.Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Opened here (to report problems synchronously) but used only by the writer thread.
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=5)
        try:
            db = sqlite_utils.Database(conn)
            db.enable_wal()  # also the first real read: a corrupt file fails here
            # WAL + NORMAL: a committed batch survives a killed process (not a power cut).
            conn.execute("PRAGMA synchronous=NORMAL")
            with conn:
                migrate(db)
            return db
        except BaseException:
            conn.close()
            raise

    def _disable(self, message: str) -> None:
        if self.warning is None:
            self.warning = message
            log.warning("%s", message)
        db, self._db = self._db, None
        if db is not None:
            try:
                db.conn.close()
            except sqlite3.Error:
                pass

    # -- request path: never blocks, never raises -------------------------------------

    def _put(self, item: Any) -> None:
        if not self.enabled:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            # Losing a log row beats stalling a completion.
            self.dropped += 1
            if self.dropped == 1:
                log.warning("feedback queue full; dropping rows")

    def record_shown(self, completion: Completion, request: CompletionRequest, *, store_prompt: bool = True) -> None:
        """`store_prompt=False` keeps only the prompt's hash (the "feedback_prompts" setting)."""
        cand = completion.candidate
        score = sum(cand.logprobs) / len(cand.logprobs) if cand and cand.logprobs else None
        self._put(("suggestions", {
            "id": completion.id,
            "time": time.time(),
            "uri_hash": uri_hash(request.uri),
            "language": request.language,
            "model_id": completion.model_id,
            "prompt_template": completion.prompt_template,
            "prompt_hash": completion.prompt_hash,
            "text": completion.text,
            "latency_ms": completion.timings_ms.get("total_ms"),
            "cut_reasons": json.dumps(completion.cut_reasons),
            "score": score,
            "variant": completion.variant,
            "prompt": completion.prompt if store_prompt and completion.prompt else None,
        }))

    def record_event(self, suggestion_id: str, kind: str, detail: dict | None = None) -> None:
        self._put(("events", {
            "suggestion_id": suggestion_id,
            "kind": kind,
            "time": time.time(),
            "detail": json.dumps(detail) if detail is not None else None,
        }))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written. True if it was."""
        if not self.enabled or self._thread is None:
            return False
        done = threading.Event()
        try:
            self._queue.put(_Flush(done), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        if self._thread is not None and self._db is not None:
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
        self._closed = True
        if self._db is not None:
            try:
                self._db.conn.close()
            except sqlite3.Error:
                pass

    # -- writer thread ------------------------------------------------------------------

    def _file_id(self) -> int | None:
        try:
            return self.path.stat().st_ino if self.path is not None else None
        except OSError:
            return None

    def _run(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=RETRY_S if self.write_error else None)]
            except queue.Empty:
                batch = []  # only a retry of the pending rows
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows: dict[str, list[dict]] = {"suggestions": [], "events": []}
            flushes: list[_Flush] = []
            stop = False
            for item in batch:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Flush):
                    flushes.append(item)
                else:
                    rows[item[0]].append(item[1])
            self._write(rows)
            for f in flushes:
                f.done.set()
            if stop or self._db is None:
                # Once disabled, wake anyone waiting in flush() and stop.
                self._drain_flushes()
                return

    @property
    def install_id(self) -> str | None:
        """A random id made once per database file: the A/B key when there is no workspace."""
        if self._db is None:
            return None
        row = self._db.conn.execute("SELECT value FROM meta WHERE key = 'install_id'").fetchone()
        return row[0] if row else None

    def _reopen_if_deleted(self) -> None:
        """A file deleted (or replaced) under us would swallow writes into an unlinked
        inode: start a new file at the path instead."""
        if self._db is None or self.path is None or self._file_id() == self._inode:
            return
        log.warning("feedback database %s was deleted or replaced; starting a new file", self.path)
        try:
            self._db.conn.close()
        except sqlite3.Error:
            pass
        self._db = self._open(self.path)
        self._inode = self._file_id()

    def _write(self, rows: dict[str, list[dict]]) -> None:
        if self._db is None:
            return
        # Redaction costs regex passes over the prompt: done here, off the request path.
        for r in rows["suggestions"]:
            r["text"], r["prompt"] = redact(r["text"]), redact(r.get("prompt"))
        for r in rows["events"]:
            r["detail"] = redact(r["detail"])
        for k in rows:  # earlier rows that failed first, in order
            rows[k] = self._pending[k] + rows[k]
        if not (rows["suggestions"] or rows["events"]):
            return
        try:
            self._reopen_if_deleted()
            db = self._db
            with db.conn:
                if rows["suggestions"]:
                    # A suggestion shown twice (same id) is one row.
                    db.table("suggestions").insert_all(rows["suggestions"], pk="id", replace=True)
                if rows["events"]:
                    db.table("events").insert_all(rows["events"], pk="id")
        except (sqlite3.Error, OSError) as e:
            kept = sum(len(v) for v in rows.values())
            if kept > MAX_PENDING:  # bounded memory: the oldest rows go first
                over = kept - MAX_PENDING
                cut = min(over, len(rows["suggestions"]))
                rows["suggestions"] = rows["suggestions"][cut:]
                rows["events"] = rows["events"][over - cut:]
                self.dropped += over
            self._pending = rows
            if self.write_error is None:
                log.warning("feedback database %s: write failed (%s); rows are kept and retried "
                            "every %.0f s, suggestions are still served", self.path, e, RETRY_S)
            self.write_error = str(e)
            return
        self._pending = {"suggestions": [], "events": []}
        if self.write_error is not None:
            log.warning("feedback database %s: writing again after: %s", self.path, self.write_error)
            self.write_error = None

    def _drain_flushes(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Flush):
                item.done.set()
