"""The feedback log: one SQLite file (WAL) written by one background thread.

The request path only puts rows on a bounded queue; the writer thread drains it in
batches, one transaction per batch. Any database problem (unwritable path, corrupt file,
full disk) disables the store with one warning: suggestions are still served.

Privacy: documents are identified by sha256 of their URI, never by the raw path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from ghost_lsp.types import Completion, CompletionRequest

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
QUEUE_SIZE = 1000
BATCH = 200


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
        if not enabled or self.path is None:
            return
        try:
            self._db = self._open(self.path)
        except (OSError, sqlite3.Error, ValueError) as e:
            self._disable(f"feedback database {self.path}: {e}; feedback logging is off")
            return
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
            meta = db.table("meta")
            if meta.exists():
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is not None and str(row[0]) != str(SCHEMA_VERSION):
                    raise ValueError(f"schema_version {row[0]} (this ghost-lsp writes {SCHEMA_VERSION})")
            with conn:
                db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
                db.table("meta").upsert({"key": "schema_version", "value": str(SCHEMA_VERSION)}, pk="key")
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

    def record_shown(self, completion: Completion, request: CompletionRequest) -> None:
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

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
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

    def _write(self, rows: dict[str, list[dict]]) -> None:
        db = self._db
        if db is None or not (rows["suggestions"] or rows["events"]):
            return
        try:
            with db.conn:
                if rows["suggestions"]:
                    # A suggestion shown twice (same id) is one row.
                    db.table("suggestions").insert_all(rows["suggestions"], pk="id", replace=True)
                if rows["events"]:
                    db.table("events").insert_all(rows["events"], pk="id")
        except (sqlite3.Error, OSError) as e:
            self._disable(f"feedback database {self.path}: write failed ({e}); feedback logging is off")

    def _drain_flushes(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Flush):
                item.done.set()
