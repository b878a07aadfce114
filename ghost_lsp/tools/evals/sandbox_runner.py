"""Runs one untrusted Python program; started by sandbox.py as `python -I -B sandbox_runner.py`.

Standard library only (it runs in isolated mode, outside the package). Reads a JSON object
{"program", "scratch", "memory_mb", "cpu_s", "nonce"} from stdin, caps the process with
rlimits, installs an audit hook that refuses sockets, new processes, native code and
writes outside the scratch folder, then executes the program with its output discarded.
Prints "PASSED <nonce>" only when the program ran to its end: an `exit(0)` or `os._exit(0)`
inside the program cannot pass for a success.
"""

import io
import json
import os
import resource
import sys

_REFUSED = ("socket.", "subprocess.", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn",
            "os.spawn", "os.system", "os.kill", "os.killpg", "pty.", "ctypes.", "os.startfile",
            "_posixsubprocess", "urllib.", "http.client", "ftplib.", "smtplib.", "webbrowser.")
_PATH_EVENTS = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod",
                "os.chown", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _limit(kind, value):
    soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value if hard == resource.RLIM_INFINITY else hard))


def _install_guard(scratch):
    scratch = os.path.realpath(scratch) + os.sep

    def inside(path):
        if isinstance(path, int):
            return True  # an already-open descriptor: its opening was checked
        try:
            p = os.fsdecode(path)
        except TypeError:
            return False
        # the folder itself too: O_TMPFILE opens it to make an unnamed file inside; /dev/null
        # swallows what it is given (pytest's logging plugin opens it)
        return (os.path.realpath(p) + os.sep).startswith(scratch) or os.path.realpath(p) == os.devnull

    def hook(event, args):
        if event.startswith(_REFUSED):
            raise PermissionError(f"sandbox: {event} refused")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                      (isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} refused")
        elif event.startswith(_PATH_EVENTS):
            if args and not inside(args[0]):
                raise PermissionError(f"sandbox: {event} {args[0]!r} refused")

    sys.addaudithook(hook)


def main():
    job = json.loads(sys.stdin.read())
    status = os.fdopen(os.dup(1), "w")
    # Generated code may print without end; nothing it writes reaches the harness.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = io.StringIO()
    sys.stdin = io.StringIO()
    mem = int(job["memory_mb"]) * 1024 * 1024
    _limit(resource.RLIMIT_AS, mem)
    _limit(resource.RLIMIT_DATA, mem)
    _limit(resource.RLIMIT_CPU, int(job["cpu_s"]))
    _limit(resource.RLIMIT_FSIZE, 1024 * 1024)
    _limit(resource.RLIMIT_CORE, 0)
    _install_guard(job["scratch"])
    code = job["program"]
    try:
        exec(compile(code, "<program>", "exec"), {"__name__": "__main__"})
    except BaseException as e:  # noqa: BLE001 - every way of failing is a result
        status.write(f"FAILED {type(e).__name__}: {str(e)[:200]}\n")
        status.flush()
        os._exit(1)
    status.write(f"PASSED {job['nonce']}\n")
    status.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
