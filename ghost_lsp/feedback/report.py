"""Reading the feedback file: per-suggestion labels, `ghost-lsp stats` and `ghost-lsp export`.

Opened read-only: a reader never blocks the server's writer (WAL) and never changes the
file, and an older schema (no `variant` / `prompt` columns) reads as empty values.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ghost_lsp.feedback.redact import redact

# A suggestion's label is its strongest event.
LABELS = ("accepted", "partially_accepted", "typed_anyway", "rejected")
POSITIVE = ("accepted", "partially_accepted", "typed_anyway")
LOOP_CUTS = ("cycle", "loop")


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """"7d", "12h", "30m", an ISO date/time, or Unix seconds → Unix seconds."""
    if not value:
        return None
    now = time.time() if now is None else now
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", value)
    if m:
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return now - float(m.group(1)) * mult
    try:
        return float(value) if re.fullmatch(r"\d{9,}(?:\.\d+)?", value) else datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValueError(f"--since {value!r}: expected e.g. 7d, 12h, 30m, 2026-01-31 or Unix seconds") from None


@dataclass
class Row:
    id: str
    time: float
    language: str
    model_id: str
    prompt_template: str
    variant: str
    prompt: str | None
    prompt_hash: str
    text: str
    latency_ms: float | None
    cut_reasons: list[str]
    label: str | None = None
    accepted_chars: int | None = None
    survival: dict[float, float] = field(default_factory=dict)  # after_s → ratio kept
    final_text: str | None = None


def load(path: str | Path, since: float | None = None) -> list[Row]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no feedback database (run the server with feedback on, or pass --db)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(suggestions)")}
        if not cols:
            return []
        opt = lambda c: c if c in cols else f"NULL AS {c}"  # noqa: E731 - older schema
        sql = (f"SELECT id, time, language, model_id, prompt_template, {opt('variant')}, {opt('prompt')}, "
               f"prompt_hash, text, latency_ms, cut_reasons FROM suggestions WHERE time >= ? ORDER BY time")
        rows = {}
        for r in conn.execute(sql, (since or 0,)):
            try:
                cuts = json.loads(r[10]) if r[10] else []
            except ValueError:
                cuts = []
            rows[r[0]] = Row(r[0], r[1] or 0.0, r[2] or "", r[3] or "", r[4] or "", r[5] or "", r[6], r[7] or "",
                             r[8] or "", r[9], cuts)
        for sid, kind, detail in conn.execute("SELECT suggestion_id, kind, detail FROM events ORDER BY id"):
            row = rows.get(sid)
            if row is None:
                continue
            try:
                d = json.loads(detail) if detail else {}
            except ValueError:
                d = {}
            if kind in LABELS:
                if row.label is None or LABELS.index(kind) < LABELS.index(row.label):
                    row.label = kind
                    row.accepted_chars = d.get("chars") if kind == "partially_accepted" else None
            elif kind == "survived" and isinstance(d.get("after_s"), (int, float)):
                row.survival[float(d["after_s"])] = float(d.get("ratio", 0.0))
                if "final_text" in d:
                    row.final_text = d["final_text"]
        return list(rows.values())
    finally:
        conn.close()


# -- stats ------------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for k successes in n trials."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of a pooled two-proportion z-test."""
    if not n1 or not n2:
        return 1.0
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = abs(k1 / n1 - k2 / n2) / se
    return math.erfc(z / math.sqrt(2))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def summarize(rows: list[Row]) -> dict:
    n = len(rows)
    count = {k: sum(1 for r in rows if r.label == k) for k in LABELS}
    acc = count["accepted"] + count["partially_accepted"]
    lat = [r.latency_ms for r in rows if r.latency_ms is not None]
    out = {
        "shown": n,
        **count,
        "unlabelled": n - sum(count.values()),
        "acceptance_rate": acc / n if n else 0.0,
        "acceptance_ci95": wilson(acc, n),
        "typed_anyway_rate": count["typed_anyway"] / n if n else 0.0,
        "typed_anyway_ci95": wilson(count["typed_anyway"], n),
        "loop_cut_rate": sum(1 for r in rows if any(c in LOOP_CUTS for c in r.cut_reasons)) / n if n else 0.0,
        "latency_p50_ms": _pct(lat, 0.5),
        "latency_p95_ms": _pct(lat, 0.95),
        "survival": {},
    }
    for after in sorted({a for r in rows for a in r.survival}):
        ratios = [r.survival[after] for r in rows if after in r.survival]
        out["survival"][f"{after:g}s"] = {"n": len(ratios), "mean_ratio": sum(ratios) / len(ratios)}
    return out


def stats(rows: list[Row]) -> dict:
    result: dict = {"overall": summarize(rows)}
    for dim in ("model_id", "prompt_template", "variant"):
        groups: dict[str, list[Row]] = {}
        for r in rows:
            groups.setdefault(getattr(r, dim) or "(none)", []).append(r)
        result[dim] = {g: summarize(rs) for g, rs in sorted(groups.items())}
    variants = {v: s for v, s in result["variant"].items() if v != "(none)"}
    if len(variants) >= 2:
        (a, sa), (b, sb) = sorted(variants.items(), key=lambda kv: -kv[1]["shown"])[:2]
        ka, kb = sa["accepted"] + sa["partially_accepted"], sb["accepted"] + sb["partially_accepted"]
        p = two_proportion_p(ka, sa["shown"], kb, sb["shown"])
        better = a if sa["acceptance_rate"] >= sb["acceptance_rate"] else b
        result["ab"] = {
            "a": a, "b": b, "p_value": p, "significant": p < 0.05,
            "verdict": (f"{better} has the higher acceptance rate, significant at 95 % (p = {p:.3g})" if p < 0.05
                        else f"no significant difference between {a} and {b} in acceptance (p = {p:.3g}); collect more data"),
        }
    return result


def format_stats(result: dict) -> str:
    def line(name: str, s: dict) -> str:
        lo, hi = s["acceptance_ci95"]
        p50 = f"{s['latency_p50_ms']:.0f}" if s["latency_p50_ms"] is not None else "-"
        p95 = f"{s['latency_p95_ms']:.0f}" if s["latency_p95_ms"] is not None else "-"
        surv = " ".join(f"{k}:{v['mean_ratio']:.2f}" for k, v in s["survival"].items()) or "-"
        return (f"  {name:<28} shown {s['shown']:>6}  accept {s['acceptance_rate']:6.1%} [{lo:.1%}, {hi:.1%}]"
                f"  partial {s['partially_accepted']:>4}  typed-anyway {s['typed_anyway_rate']:6.1%}"
                f"  loop-cut {s['loop_cut_rate']:5.1%}  latency p50/p95 {p50}/{p95} ms  survival {surv}")

    out = ["overall", line("all", result["overall"])]
    for dim, title in (("model_id", "per model"), ("prompt_template", "per prompt template"), ("variant", "per A/B variant")):
        out.append(title)
        out += [line(g, s) for g, s in result[dim].items()]
    if "ab" in result:
        out.append("A/B: " + result["ab"]["verdict"])
    return "\n".join(out)


# -- export -------------------------------------------------------------------------------------


def export_rows(rows: list[Row], kinds: tuple[str, ...] = POSITIVE) -> list[dict]:
    """Fine-tuning records: prompt → completion (the text the user took), deduplicated and
    redacted again (rows written by an older ghost-lsp were not)."""
    out, seen = [], set()
    for r in rows:
        if r.label not in kinds:
            continue
        completion = r.text[:r.accepted_chars] if r.label == "partially_accepted" and r.accepted_chars else r.text
        key = (r.prompt_hash or r.prompt or "", completion)
        if key in seen:
            continue
        seen.add(key)
        out.append({
            "id": r.id,
            "time": r.time,
            "prompt": redact(r.prompt),  # null when prompts were not stored
            "completion": redact(completion),
            "label": r.label,
            "final_text": redact(r.final_text),
            "language": r.language,
            "model_id": r.model_id,
            "prompt_template": r.prompt_template,
            "variant": r.variant,
        })
    return out


# -- plot ---------------------------------------------------------------------------------------


def over_time(rows: list[Row], buckets: int = 12) -> dict:
    """Acceptance, typed-anyway and loop-cut rates and latency p50 per time bucket and variant:
    {variant: [{"start", "end", "shown", "acceptance_rate", ...}]} (equal-width buckets over the span)."""
    if not rows:
        return {}
    t0, t1 = min(r.time for r in rows), max(r.time for r in rows)
    width = (t1 - t0) / buckets or 1.0
    out: dict[str, list[dict]] = {}
    for variant in sorted({r.variant or "(none)" for r in rows}):
        mine = [r for r in rows if (r.variant or "(none)") == variant]
        series = []
        for b in range(buckets):
            lo, hi = t0 + b * width, t0 + (b + 1) * width
            part = [r for r in mine if lo <= r.time < hi or (b == buckets - 1 and r.time == hi)]
            if part:
                s = summarize(part)
                series.append({"start": lo, "end": hi, "shown": s["shown"], "acceptance_rate": s["acceptance_rate"],
                               "acceptance_ci95": s["acceptance_ci95"], "typed_anyway_rate": s["typed_anyway_rate"],
                               "loop_cut_rate": s["loop_cut_rate"], "latency_p50_ms": s["latency_p50_ms"]})
        out[variant] = series
    return out


def plot(rows: list[Row], out: str | Path, buckets: int = 12) -> dict:
    """A PNG of acceptance (with its 95 % interval), typed-anyway and loop-cut rates and p50
    latency over time, one line per A/B variant. Needs matplotlib (the eval extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display; never touch stdout
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'ghost-lsp[eval]'") from None
    series = over_time(rows, buckets)
    if not series:
        raise ValueError("no suggestions in the feedback database (for this --since): nothing to plot")
    panels = [("acceptance_rate", "acceptance (accept + partial)"), ("typed_anyway_rate", "typed anyway"),
              ("loop_cut_rate", "loop cut by filters"), ("latency_p50_ms", "latency p50 (ms)")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.3 * len(panels)), sharex=True, squeeze=False)
    for (key, title), ax in zip(panels, axes[:, 0]):
        for variant, pts in series.items():
            xs = [datetime.fromtimestamp((p["start"] + p["end"]) / 2) for p in pts]
            ys = [p[key] if p[key] is not None else float("nan") for p in pts]
            ax.plot(xs, ys, marker="o", label=f"{variant} (n={sum(p['shown'] for p in pts)})")
            if key == "acceptance_rate":
                ax.fill_between(xs, [p["acceptance_ci95"][0] for p in pts], [p["acceptance_ci95"][1] for p in pts],
                                alpha=0.2)
        ax.set_title(title, fontsize=9, loc="left")
        ax.grid(alpha=0.3)
        if key.endswith("_rate"):
            ax.set_ylim(0, max(0.05, ax.get_ylim()[1]))
    axes[0, 0].legend(fontsize=8, loc="upper right")
    axes[-1, 0].xaxis.set_major_formatter(mdates.ConciseDateFormatter(mdates.AutoDateLocator()))
    fig.suptitle("ghost-lsp feedback over time, per A/B variant", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return series
