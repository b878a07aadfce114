"""Security through the real server: secrets never reach the feedback file or the log;
an excluded file never produces a model request; no shell=True, no eval/exec of model
output outside the eval sandbox.

Model-server auth, oversize bodies and admission under a flood are tested in
tests/test_serving_http.py (test_auth_and_bad_requests, test_queue_full_answers_429_fast_and_nothing_hangs,
test_non_loopback_host_requires_a_token); redaction rules per secret kind in tests/test_redact.py.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import threading
import time
from pathlib import Path

from tests.reliability.wire import PROBE_OPTIONS, Wire

ROOT = Path(__file__).resolve().parents[2]
SECRETS = [ln.split("\t") for ln in (ROOT / "tests/data/secrets/secrets.txt").read_text().splitlines()
           if ln and not ln.startswith("#")]


def test_secrets_never_reach_the_database_or_the_log(model_dir, tmp_path):
    db = tmp_path / "f.db"
    w = Wire(model_dir, db, extra_args=("--log-level", "DEBUG"))
    try:
        w.initialize({"ghost": {**PROBE_OPTIONS["ghost"], "logLevel": "DEBUG"}})
        text = "\n".join(line for _, line in SECRETS) + "\n\ndef mul(a, b):\n    return "
        uri = "file:///sec/config.py"
        w.open(uri, text)
        last = text.count("\n")
        got = w.inline(uri, last, 11, timeout=30)
        assert got and got["result"]["items"], got  # a suggestion was shown and logged, with its prompt
        sid = got["result"]["items"][0]["command"]["arguments"][0]
        w.request("workspace/executeCommand", {"command": "ghost.accept", "arguments": [sid]})
        w.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
            {"range": {"start": {"line": last, "character": 11}, "end": {"line": last, "character": 11}},
             "text": SECRETS[0][0]}]})
    finally:
        w.close()
    conn = sqlite3.connect(db)
    dump = "\n".join(conn.iterdump())
    conn.close()
    assert "prompt" in dump and "config" not in dump  # prompts are stored (redacted); uris hashed
    log = w.log_text()
    assert "DEBUG" in log
    for secret, _ in SECRETS:
        assert secret not in dump, secret
        assert secret not in log, secret


class _CountingListener:
    """A TCP port that counts connections (any model request would open one) and closes them."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            c.close()


def test_excluded_files_never_reach_the_model(tmp_path):
    remote = _CountingListener()
    opts = {"ghost": {**PROBE_OPTIONS["ghost"], "remoteUrl": f"http://127.0.0.1:{remote.port}",
                      "remoteFallback": False, "exclude": ["**/secret/**", "*.env"]}}
    w = Wire(tmp_path / "no-local-model", tmp_path / "f.db")
    try:
        w.initialize(opts)
        deadline = time.monotonic() + 10
        while not w.health()["model_loaded"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        before = remote.connections  # the engine's model discovery at load, if any
        for uri in ["file:///p/secret/keys.py", "file:///p/prod.env"]:
            w.open(uri, "API_KEY = 'x'\n")
            assert w.inline(uri, 0, 5).get("result") is None
        assert remote.connections == before
        w.open("file:///p/ok.py", "x = 1\n")
        w.inline("file:///p/ok.py", 0, 5)
        assert remote.connections > before  # the counter does see a request for a normal file
    finally:
        w.close()
        remote.sock.close()


def test_no_shell_true_and_no_eval_outside_the_sandbox():
    allowed_exec = {"ghost_lsp/tools/evals/sandbox_runner.py"}  # runs candidate programs in the sandbox
    found = []
    for path in (ROOT / "ghost_lsp").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(", code):
                found.append(f"{rel}:{n}: {line.strip()}")
            if re.search(r"(?<![\w.])(eval|exec)\(", code) and rel not in allowed_exec:
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, found
    assert "exec(" in (ROOT / "ghost_lsp/tools/evals/sandbox_runner.py").read_text()  # the grep does see exec


def test_redaction_is_linear_on_long_runs():
    """The writer thread redacts every row: a long identifier-like run (minified code, a
    base64 blob in a prompt) once took quadratic time and stalled the feedback log."""
    from ghost_lsp.feedback.redact import redact

    for text in ['{"pad": "' + "y" * 50_000 + '"}', "a" * 200_000, "api_key = '" + "Ab1" * 30_000 + "'"]:
        t = time.perf_counter()
        redact(text)
        assert time.perf_counter() - t < 2.0, len(text)
