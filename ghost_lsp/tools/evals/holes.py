"""`eval holes`: cut a function body out of a held-out project, let the pipeline fill it, run
the project's own pytest tests (the llm-ls testbed idea, small).

1. The project (a folder, an sdist, or a reserved PyPI package) is run once in the sandbox
   with a profiler that records, for every function of its own source files, which test
   files called it (`trace`). This run must pass: it is the "original bodies" check.
2. Holes are functions the tests called (tests that pass as shipped: a test that fails
   on the original code in the sandbox, because it forks say, is left out of every run),
   with a body of at most `max_body_lines` lines
   after their docstring. The hole keeps the decorators, signature and docstring; the
   body goes, the rest of the file stays as the suffix of the document.
3. The pipeline fills the hole as an editor would (humaneval.complete_body: suggestion,
   accept, Enter, ask again), the project is copied into a scratch folder with the filled
   file, and the test files that called the function run there (sandbox.py); a test that
   ran outside any test file (at import) sends the hole to the whole suite.
A hole passes when those tests all pass.

Why one module over 400 lines: the three steps above and the command are one eval, read in
the order it runs; the sandbox and the sources are their own modules.
"""

from __future__ import annotations

import ast
import json
import random
import sys
import tarfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ghost_lsp.tools.evals.sandbox import ExecResult, Limits, run_program
from ghost_lsp.tools.evals.sources import _is_test_path, cache_dir

TRACE_FILE = ".ghost-holes-trace.json"
ALL_TESTS = "*"  # a call made outside any test (import, collection): every test may depend on it
_NOT_SOURCE = {"setup.py", "conftest.py", "noxfile.py", "fabfile.py"}
_NOT_SOURCE_DIRS = {"docs", "doc", "examples", "benchmarks", "bench", "scripts", "build", "dist", ".tox",
                    ".git", "__pycache__", ".venv", "venv"}


@dataclass(frozen=True)
class Hole:
    path: str       # relative to the project root
    name: str       # qualified: Class.method or function
    prefix: str     # the file up to the body's first line (decorators, signature, docstring)
    indent: str     # the body's indentation: where the cursor sits
    suffix: str     # "\n" + the file after the function
    body: str       # the original body (lines, with their indentation)
    tests: tuple[str, ...]  # test files to run; empty: the whole suite

    def filled(self, body: str) -> str:
        """The file with `body` (lines with their indentation, '\\n'-ended) in the hole."""
        return self.prefix + body + self.suffix[1:]


@dataclass
class HoleResult:
    hole: Hole
    completion: str
    result: ExecResult
    parses: bool = True


@dataclass
class Project:
    root: Path
    name: str
    sources: dict[str, str] = field(default_factory=dict)  # relative path -> text


# -- the project -----------------------------------------------------------------------------------


def unpack(source: Path, dest: Path | None = None) -> Path:
    """A project folder from a folder or an sdist archive (unpacked once into the cache)."""
    if source.is_dir():
        return source
    if not source.is_file():
        raise ValueError(f"{source}: no such folder or archive")
    stem = source.name.removesuffix(".tar.gz").removesuffix(".tgz").removesuffix(".zip")
    out = (dest or cache_dir() / "unpacked") / stem
    if not out.exists():
        tmp = out.with_name(out.name + ".part")
        tmp.mkdir(parents=True, exist_ok=True)
        if source.name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(source) as tf:
                tf.extractall(tmp, filter="data")  # no links out, no absolute paths
        elif source.suffix == ".zip":
            with zipfile.ZipFile(source) as zf:
                zf.extractall(tmp)
        else:
            raise ValueError(f"{source}: not a .tar.gz/.zip sdist")
        tmp.rename(out)
    entries = [p for p in out.iterdir()]
    # an sdist holds one top folder, name-version/
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else out


def load_project(root: Path) -> Project:
    """The project's own source files: .py files outside tests, docs and build scripts."""
    sources = {}
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if _NOT_SOURCE_DIRS & set(rel.parts[:-1]) or rel.name in _NOT_SOURCE or _is_test_path(str(rel)):
            continue
        try:
            sources[rel.as_posix()] = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
    if not sources:
        raise ValueError(f"{root}: no Python source files outside its tests")
    return Project(root, root.name, sources)


# -- the programs run in the sandbox ---------------------------------------------------------------

# pytest in the scratch folder (the project's copy), without plugins from the eval's own
# environment; the first failing test is the failure's detail.
_PYTEST = r'''
import os, sys
os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
ROOT = os.getcwd()
sys.path.insert(0, ROOT)
import pytest

class _Report:
    def __init__(self):
        self.failed, self.passed = [], 0
    def pytest_runtest_logreport(self, report):
        if report.failed and report.nodeid not in self.failed:
            self.failed.append(report.nodeid)
        self.passed += report.passed and report.when == "call"
    def pytest_collectreport(self, report):
        if report.failed:
            self.failed.append("collecting " + report.nodeid)

_report = _Report()
_plugins = [_report]
'''

_RUN = r'''
_rc = pytest.main(["-q", "-x", "-p", "no:cacheprovider", "-p", "no:faulthandler", "-p", "no:warnings"]
                  + ARGS, plugins=_plugins)
if _rc != 0:
    raise AssertionError(f"pytest exit {int(_rc)}: " + ", ".join(_report.failed[:3]))
'''

# The baseline run adds a profiler: which test file called which function of the sources.
_TRACE = r'''
import json, threading
_src = {os.path.join(ROOT, rel): rel for rel in SOURCES}
_current = ["*"]
_calls = {}
_where = {}

class _Where:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        _current[0] = item.nodeid
        _where[item.nodeid] = os.path.relpath(str(item.path), ROOT)
        yield
        _current[0] = "*"

def _profile(frame, event, arg):
    if event == "call":
        rel = _src.get(frame.f_code.co_filename)
        if rel is not None:
            _calls.setdefault(f"{rel}:{frame.f_code.co_firstlineno}", set()).add(_current[0])

_plugins.append(_Where())
sys.setprofile(_profile)
threading.setprofile(_profile)
try:
    _rc = pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:faulthandler", "-p", "no:warnings"] + ARGS,
                      plugins=_plugins)
finally:
    sys.setprofile(None)
    threading.setprofile(None)
with open(os.path.join(ROOT, TRACE_FILE), "w") as _f:
    json.dump({"calls": {k: sorted(v) for k, v in _calls.items()}, "where": _where,
               "failed": _report.failed, "passed": _report.passed, "exit": int(_rc)}, _f)
'''


def _program(args: list[str], trace_sources: list[str] | None = None) -> str:
    head = _PYTEST + f"ARGS = {json.dumps(args)}\n"
    if trace_sources is not None:
        return head + f"SOURCES = {json.dumps(trace_sources)}\nTRACE_FILE = {TRACE_FILE!r}\n" + _TRACE
    return head + _RUN


@dataclass
class Trace:
    calls: dict[str, list[str]]  # "path:first line" -> the tests (node ids) that called it, or ALL_TESTS
    where: dict[str, str]        # node id -> its test file, relative to the project root
    broken: list[str]            # tests that fail on the original code here (they fork, say): left out
    passed: int = 0

    def test_files(self, key: str) -> tuple[str, ...] | None:
        """The test files to run for the function at `key`: () for all, None when no working test calls it."""
        callers = [n for n in self.calls.get(key, ()) if n not in self.broken]
        if ALL_TESTS in callers:
            return ()
        return tuple(sorted({self.where[n] for n in callers if n in self.where})) or None

    def deselect(self) -> list[str]:
        """pytest arguments that leave the broken tests out of every hole's run."""
        out = []
        for node in self.broken:
            out += ["--ignore", node[len("collecting "):]] if node.startswith("collecting ") \
                else ["--deselect", node]
        return out


def trace(project: Project, limits: Limits) -> Trace:
    """Run the project's tests on its original code, recording who called what.

    Tests that fail on the original code in the sandbox (they fork or use the network, say)
    are recorded as broken and left out later; raises ValueError when no test passes."""
    r = run_program(_program([], sorted(project.sources)), limits, tree=project.root, read_back=TRACE_FILE)
    try:
        data = json.loads(r.output) if r.output else {}
    except ValueError:
        data = {}
    if r.status == "timeout" or not data.get("passed"):
        raise ValueError(f"{project.name}: no test of its own passes on the original code in the sandbox "
                         f"({r.status}: {r.detail or 'no detail'}); give a longer --timeout or another project")
    if data.get("exit") not in (0, 1):  # 1: some tests failed; anything else: pytest itself did not run
        raise ValueError(f"{project.name}: pytest ended with exit code {data.get('exit')}: {r.detail}")
    return Trace(data["calls"], data["where"], data["failed"], data["passed"])


# -- holes -----------------------------------------------------------------------------------------


def _functions(tree: ast.Module):
    """(qualified name, node) of module-level functions and methods of module-level classes."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{node.name}.{sub.name}", sub


def cut(path: str, text: str, name: str, node: ast.FunctionDef, tests: tuple[str, ...]) -> Hole | None:
    """The hole for one function, or None when its body cannot be cut cleanly (a body on the
    `def` or docstring line, or nothing after the docstring). Comments before the first
    statement stay, like the docstring."""
    lines = text.splitlines(keepends=True)
    body, after = node.body, node.lineno
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body, after = body[1:], body[0].end_lineno
    if not body:
        return None
    stmt = body[0]
    first = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
    if first <= after or first > len(lines):
        return None
    first_line = lines[first - 1]
    indent = first_line[: len(first_line) - len(first_line.lstrip())]
    if not indent or "\t" in indent or not first_line.strip():
        return None
    start, end = first - 1, node.end_lineno
    return Hole(path=path, name=name, prefix="".join(lines[:start]), indent=indent,
                suffix="\n" + "".join(lines[end:]), body="".join(lines[start:end]), tests=tests)


def find_holes(project: Project, tr: Trace, *, limit: int | None = None, seed: int = 0,
               max_body_lines: int = 20) -> list[Hole]:
    """Functions the tests called, cut; a sample of `limit` of them (seeded), in file order."""
    holes = []
    for path, text in project.sources.items():
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for name, node in _functions(tree):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])  # co_firstlineno
            tests = tr.test_files(f"{path}:{first}")
            if tests is None:
                continue
            hole = cut(path, text, name, node, tests)
            if hole is not None and 0 < hole.body.count("\n") <= max_body_lines:
                holes.append(hole)
    if limit is not None and limit < len(holes):
        keep = set(random.Random(seed).sample(range(len(holes)), limit))
        holes = [h for i, h in enumerate(holes) if i in keep]
    return holes


# -- filling and running ---------------------------------------------------------------------------


def fill(pipeline, hole: Hole, rounds: int = 4) -> str:
    """The body the pipeline's accepted suggestions add up to ('' if nothing was shown)."""
    from ghost_lsp.tools.evals.humaneval import complete_body

    return complete_body(pipeline, {"prompt": hole.prefix, "task_id": hole.path}, rounds=rounds,
                         indent=hole.indent, suffix=hole.suffix, path=hole.path)


def placeholder(hole: Hole, kind: str) -> str:
    """Harness checks: the original body, or a body that does nothing."""
    if kind == "original":
        return hole.body
    return hole.indent + {"pass": "pass", "raise": "raise NotImplementedError"}[kind] + "\n"


def run_hole(project: Project, hole: Hole, body: str, limits: Limits, deselect: list[str] = ()) -> HoleResult:
    """The project with `body` in the hole, its tests run in the sandbox."""
    if not body:
        return HoleResult(hole, body, ExecResult("failed", "no suggestion", 0.0), parses=False)
    text = hole.filled(body)
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):  # it cannot import: no need to start pytest to know
        return HoleResult(hole, body, ExecResult("failed", "syntax error", 0.0), parses=False)
    r = run_program(_program(list(hole.tests) + list(deselect)), limits, tree=project.root,
                    files={hole.path: text})
    return HoleResult(hole, body, r)


def execute(project: Project, holes: list[Hole], bodies: list[str], limits: Limits, workers: int = 2,
            progress: Callable[[int, int], None] | None = None, deselect: list[str] = ()) -> list[HoleResult]:
    """Each hole filled with its body, the project's tests run, `workers` sandboxes at a time."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(run_hole, project, h, b, limits, deselect) for h, b in zip(holes, bodies)]
        out = []
        for i, f in enumerate(futures, 1):
            out.append(f.result())
            if progress:
                progress(i, len(futures))
    return out


def summarise(results: list[HoleResult]) -> dict:
    n = max(1, len(results))
    count = lambda pred: sum(1 for r in results if pred(r)) / n  # noqa: E731
    return {"pass_rate": count(lambda r: r.result.passed),
            "syntax_error_rate": count(lambda r: r.completion and not r.parses),
            "no_suggestion_rate": count(lambda r: not r.completion),
            "timeout_rate": count(lambda r: r.result.status == "timeout"),
            "holes": len(results)}


# -- the command -----------------------------------------------------------------------------------


def add_arguments(p) -> None:
    from ghost_lsp.tools.evals.common import add_common_arguments

    add_common_arguments(p)
    p.add_argument("--package", metavar="NAME",
                   help="a PyPI package reserved for evaluation, fetched as an sdist (e.g. toolz)")
    p.add_argument("--source", metavar="PATH", help="a project folder or sdist archive with its pytest tests")
    p.add_argument("--limit", type=int, default=30, metavar="N", help="holes sampled (default 30; 0: all)")
    p.add_argument("--max-body-lines", type=int, default=20, help="longest body cut out")
    p.add_argument("--rounds", type=int, default=4, help="accept-and-continue requests per hole")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per hole's test run")
    p.add_argument("--trace-timeout", type=float, default=600.0, help="seconds for the first, traced test run")
    p.add_argument("--memory-mb", type=int, default=1024, help="address-space cap per test run")
    p.add_argument("--workers", type=int, default=2, help="test runs in parallel")
    p.add_argument("--samples-out", metavar="JSONL", help="write every hole, its fill and its result here")
    p.add_argument("--solutions", choices=("original", "pass", "raise"),
                   help="check the harness: fill the holes with the original bodies (or `pass`, or "
                        "`raise NotImplementedError`) instead of a model")


def cached_trace(project: Project, limits: Limits, archive: Path | None) -> Trace:
    """`trace`, kept beside the cached sdist: the same archive traced by the same program
    gives the same calls, and the traced run is the slowest step."""
    if archive is None:
        return trace(project, limits)
    import hashlib

    key = hashlib.sha256(archive.read_bytes() + _program([], sorted(project.sources)).encode()).hexdigest()[:16]
    path = cache_dir() / "traces" / f"{archive.name}-{key}.json"
    try:
        return Trace(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    tr = trace(project, limits)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tr.__dict__))
    return tr


def _project(args) -> tuple[Project, Path | None, bool]:
    """The project, its sdist (None for --source) and whether it is held out (reserved for evaluation)."""
    from ghost_lsp.tools.evals.sources import download_sdist, reserved_packages

    if bool(args.package) == bool(args.source):
        raise ValueError("give one of --package NAME or --source PATH")
    if args.package:
        reserved = reserved_packages()
        held_out = not reserved or args.package.lower() in reserved
        if not held_out:
            print(f"ghost-lsp eval: warning: {args.package} is not reserved for evaluation; a model may have "
                  "trained on it", file=sys.stderr)
        archive = download_sdist(args.package)
        return load_project(unpack(archive)), archive, held_out
    return load_project(unpack(Path(args.source))), None, False


def main_args(args) -> int:
    from dataclasses import asdict

    from ghost_lsp.tools.evals.common import Progress, fail, print_metrics, settings_from_args, settings_dict, store
    from ghost_lsp.tools.evals.history import Record
    from ghost_lsp.tools.evals.pipeline import ModelLoadError, Pipeline
    from ghost_lsp.tools.evals.sandbox import isolation_summary
    from ghost_lsp.settings.core import model_dir

    t0 = time.monotonic()
    try:
        project, archive, held_out = _project(args)
        origin = archive.name if archive else str(args.source)
        if not args.json:
            print(f"running {project.name}'s tests once, traced (cached for an sdist)", file=sys.stderr, flush=True)
        tr = cached_trace(project, Limits(args.trace_timeout, args.memory_mb), archive)
    except (ValueError, OSError) as e:
        return fail(str(e))
    holes = find_holes(project, tr, limit=args.limit or None, seed=args.seed, max_body_lines=args.max_body_lines)
    if not holes:
        return fail(f"{project.name}: no function its tests call has a body of 1..{args.max_body_lines} lines")
    trace_s = time.monotonic() - t0
    limits = Limits(args.timeout, args.memory_mb)
    run = lambda bodies, label: execute(project, holes, bodies, limits, args.workers,  # noqa: E731
                                        Progress(label, len(holes), not args.json), tr.deselect())
    if args.solutions:  # harness check, no model
        results = run([placeholder(h, args.solutions) for h in holes], f"executing {args.solutions}")
        metrics = summarise(results)
        if args.json:
            print(json.dumps(metrics))
        else:
            print_metrics(f"holes in {project.name}, {args.solutions} bodies", metrics)
        _write_samples(args.samples_out, results)
        return 0
    s = settings_from_args(args)
    try:
        pipeline = Pipeline(model_dir(s), s)
    except ModelLoadError as e:
        return fail(str(e))
    try:
        bar = Progress(f"holes {pipeline.model_id}", len(holes), not args.json)
        t1 = time.monotonic()
        bodies = []
        for i, h in enumerate(holes, 1):
            bodies.append(fill(pipeline, h, args.rounds))
            bar(i)
        gen_s = time.monotonic() - t1
        results = run(bodies, "executing")
        metrics = {**summarise(results), **pipeline.stats.metrics()}
        rec = Record(kind="holes", model_id=pipeline.model_id, model_dir=str(model_dir(s)), metrics=metrics,
                     prompt_template=pipeline.prompt_template,
                     settings={**settings_dict(pipeline.settings), "rounds": args.rounds, "seed": args.seed,
                               "max_body_lines": args.max_body_lines},
                     details={"project": project.name, "source": origin, "held_out": held_out, "limit": args.limit,
                              "holes": [{"hole": f"{r.hole.path}:{r.hole.name}", "status": r.result.status,
                                         "detail": r.result.detail[:120]} for r in results][:200],
                              "tests_left_out": tr.broken, "tests_passing_as_shipped": tr.passed,
                              "sandbox": {"isolation": isolation_summary(), "timeout_s": limits.timeout_s,
                                          "memory_mb": limits.memory_mb},
                              "trace_s": round(trace_s, 1), "generate_s": round(gen_s, 1),
                              "total_s": round(time.monotonic() - t0, 1)})
    finally:
        pipeline.close()
    store(args, rec)
    _write_samples(args.samples_out, results)
    if args.json:
        print(json.dumps(asdict(rec)))
    else:
        print_metrics(f"holes: {rec.model_id} ({len(holes)} holes in {project.name})", rec.metrics)
    return 0


def _write_samples(path: str | None, results: list[HoleResult]) -> None:
    if not path:
        return
    with open(path, "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps({"path": r.hole.path, "name": r.hole.name, "tests": list(r.hole.tests),
                                "original": r.hole.body, "completion": r.completion, "status": r.result.status,
                                "detail": r.result.detail}) + "\n")
