"""Execute generated code safely enough for an eval: one process per program.

Each program runs in a fresh `python -I -B` process (sandbox_runner.py) in its own scratch
folder, in a new session so a timeout kills it with every child it might have made, with
rlimits on memory, CPU time and file size, and an audit hook that refuses sockets, new
processes, native code and writes outside the scratch folder. Where `unshare` can make a
network namespace the process also has no network device at all. The result is a status
string; nothing the program does raises in the harness.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

RUNNER = Path(__file__).with_name("sandbox_runner.py")


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_mb: int = 1024


@dataclass
class ExecResult:
    status: str  # "passed" | "failed" | "timeout" | "error"
    detail: str
    seconds: float
    output: str = ""  # the scratch file named by `read_back`, if the program wrote it

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@lru_cache(maxsize=1)
def network_isolation() -> list[str]:
    """The command prefix that gives the program no network, or [] where none works here."""
    exe = shutil.which("unshare")
    if not exe:
        return []
    for prefix in ([exe, "--net"], [exe, "--map-root-user", "--net"]):
        try:
            ok = subprocess.run(prefix + ["true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return prefix
    return []


def isolation_summary() -> str:
    return ("netns+" if network_isolation() else "") + "audit-hook+rlimits"


READ_BACK_MAX = 8 * 1024 * 1024


def run_program(program: str, limits: Limits = Limits(), *, tree: Path | None = None,
                files: dict[str, str] | None = None, read_back: str | None = None) -> ExecResult:
    """Run `program`; "passed" only if it ran to its end without an exception.

    `tree` (a project folder) is copied into the scratch folder, the program's working
    directory, and `files` (relative path -> text) written over it; `read_back` names a
    scratch file the program may write, returned as `output` (a trace, say)."""
    nonce = uuid.uuid4().hex
    scratch = Path(tempfile.mkdtemp(prefix="ghost-eval-"))
    try:
        _populate(scratch, tree, files)
    except (OSError, ValueError) as e:
        shutil.rmtree(scratch, ignore_errors=True)
        return ExecResult("error", f"cannot prepare the scratch folder: {e}", 0.0)
    job = json.dumps({"program": program, "scratch": str(scratch), "memory_mb": limits.memory_mb,
                      "cpu_s": max(1, int(limits.timeout_s) + 1), "nonce": nonce})
    cmd = network_isolation() + [sys.executable, "-I", "-B", str(RUNNER)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch), "TMPDIR": str(scratch),
           "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                cwd=scratch, env=env, start_new_session=True, text=True)
    except OSError as e:
        shutil.rmtree(scratch, ignore_errors=True)
        return ExecResult("error", f"cannot start python: {e}", 0.0)
    try:
        out, _ = proc.communicate(job, timeout=limits.timeout_s)
        status = _status(out, nonce, proc.returncode)
    except subprocess.TimeoutExpired:
        status = ("timeout", f"killed after {limits.timeout_s:g} s")
    finally:
        _kill_group(proc)
        output = _read_back(scratch, read_back)
        shutil.rmtree(scratch, ignore_errors=True)
    return ExecResult(status[0], status[1], round(time.monotonic() - t0, 3), output)


def _populate(scratch: Path, tree: Path | None, files: dict[str, str] | None) -> None:
    if tree is not None:
        shutil.copytree(tree, scratch, dirs_exist_ok=True, symlinks=False,
                        ignore=shutil.ignore_patterns("__pycache__", ".git", "*.pyc"))
    for rel, text in (files or {}).items():
        dest = (scratch / rel).resolve()
        if not dest.is_relative_to(scratch.resolve()):
            raise ValueError(f"{rel!r} is outside the scratch folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")


def _read_back(scratch: Path, name: str | None) -> str:
    if not name:
        return ""
    path = scratch / name
    try:  # the program wrote it: a link or a huge file is refused, not followed
        if path.is_symlink() or not path.is_file() or path.stat().st_size > READ_BACK_MAX:
            return ""
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _status(out: str, nonce: str, rc: int) -> tuple[str, str]:
    lines = out.strip().splitlines()
    last = lines[-1] if lines else ""
    if rc == 0 and last == f"PASSED {nonce}":
        return "passed", ""
    if last.startswith("FAILED "):
        return "failed", last[len("FAILED "):]
    if rc < 0:
        return "failed", f"killed by {signal.Signals(-rc).name}"
    return "failed", f"exited with {rc} before the end"


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the program's whole session: a forked child must not outlive its eval."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError):
        pass
