"""A raw LSP client for the real `ghost-lsp serve` process: it writes any bytes (a
well-behaved client library would refuse to send what the fuzzers need) and reads the
server's framed replies on a thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Counted by the tests, printed at the end of the run (conftest.py): the README figures.
FIGURES: Counter = Counter()
# Settings that make a completion deterministic and self-contained: greedy, one candidate,
# no snippets from other documents, no quality filters (random-weight models write noise).
PROBE_OPTIONS = {"ghost": {"debounceMs": 0, "maxNewTokens": 8, "n": 1, "contextProviders": [],
                           "filters": {"bracketBalance": False, "syntax": False, "confidence": False,
                                       "trivial": False}}}
PROBE_TEXT = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return "


def frame(body: bytes | str | dict) -> bytes:
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class Wire:
    """One server process. `request` sends and waits for the answer with that id."""

    def __init__(self, model: Path | str, db: Path | str, *, log: Path | None = None,
                 extra_args: tuple[str, ...] = (), env: dict | None = None):
        self.log_path = Path(log) if log else Path(str(db) + ".log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ghost_lsp.cli", "serve", "--model", str(model), "--db", str(db), *extra_args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT,
            env={**os.environ, **(env or {})})
        self._cond = threading.Condition()
        self.responses: dict = {}
        self.notifications: list[dict] = []
        self.bytes_sent = 0
        self.messages_sent = 0
        self._next_id = 1000
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    # -- reading ----------------------------------------------------------------------

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                elif line in (b"\r\n", b"\n") and length is not None:
                    break
            msg = json.loads(out.read(length))
            with self._cond:
                if "id" in msg and "method" not in msg:
                    self.responses[msg["id"]] = msg
                elif "method" in msg:
                    self.notifications.append(msg)
                    if "id" in msg:  # a server→client request (registerCapability…): answer it
                        self.send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
                self._cond.notify_all()

    def wait_response(self, rid, timeout: float = 20.0) -> dict | None:
        end = time.monotonic() + timeout
        with self._cond:
            while rid not in self.responses:
                left = end - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return self.responses.get(rid)
                self._cond.wait(min(left, 0.2))
            return self.responses.pop(rid)

    def messages_shown(self) -> list[str]:
        with self._cond:
            return [n["params"]["message"] for n in self.notifications if n.get("method") == "window/showMessage"]

    # -- writing ----------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        with self._lock:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
            self.bytes_sent += len(data)
            self.messages_sent += 1

    def send(self, msg: dict) -> None:
        self.send_raw(frame(msg))

    def notify(self, method: str, params) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def request(self, method: str, params, timeout: float = 20.0) -> dict | None:
        rid = self.new_id()
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        return self.wait_response(rid, timeout)

    # -- the session ------------------------------------------------------------------

    def initialize(self, options: dict | None = None, root: Path | None = None) -> dict:
        got = self.request("initialize", {
            "processId": os.getpid(), "rootUri": root.as_uri() if root else None,
            "capabilities": {"textDocument": {"inlineCompletion": {}}},
            "initializationOptions": options or {}})
        assert got and "result" in got, got
        self.notify("initialized", {})
        return got["result"]

    def open(self, uri: str, text: str, version: int = 1) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "python", "version": version, "text": text}})

    def inline(self, uri: str, line: int, character: int, timeout: float = 20.0) -> dict | None:
        return self.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1}}, timeout)

    def health(self) -> dict:
        got = self.request("ghost/health", None, timeout=10)
        assert got and "result" in got, got
        return got["result"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            try:
                self.request("shutdown", None, timeout=5)
                self.notify("exit", None)
                self.proc.wait(5)
            except Exception:  # noqa: BLE001 - already gone or stuck: kill below
                pass
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")
