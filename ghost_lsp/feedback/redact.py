"""Secret redaction: applied to every text before it reaches the feedback database or a log.

Rules are ordered from the most specific (a provider's key format, a PEM block) to the most
general (a long high-entropy token), so the marker names what was found. A redaction keeps
the surrounding text (the variable name, the URL's user and host) so the data stays useful
for training while the secret itself is gone.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter

MARK = "[REDACTED]"


def _mark(kind: str) -> str:
    return f"[REDACTED:{kind}]"


_SECRET_NAME = (r"(?:secret|token|passw(?:or)?d|passwd|pwd|api[_-]?key|apikey|access[_-]?key|private[_-]?key|"
                r"credentials?|auth[_-]?key|session[_-]?key|signing[_-]?key)")

# An unquoted value: not a capitalised type name, not a call or subscript.
_UNQUOTED = r"""(?P<secret>(?!(?-i:[A-Z][a-z]+)\b)[^\s"'#(\[),;]{4,}+)(?![(\[])"""

# (kind, pattern); the whole match is replaced unless the pattern has a group named "secret".
_RULES: list[tuple[str, re.Pattern]] = [
    ("private_key", re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
        re.S)),
    ("aws_key", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b")),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})\b")),
    ("gitlab_token", re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}\b")),
    ("anthropic_key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}")),
    ("openai_key", re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}")),
    ("stripe_key", re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}\b")),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("slack_webhook", re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+")),
    ("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("hf_token", re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    ("npm_token", re.compile(r"\bnpm_[A-Za-z0-9]{36}\b")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    # scheme://user:password@host — keep the user and the host.
    ("url_password", re.compile(r"(?P<pre>\b[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:)(?P<secret>[^\s@/'\"]+)(?=@)", re.I)),
    ("bearer", re.compile(r"(?P<pre>\b(?:Bearer|Basic|Token)\s+)(?P<secret>[A-Za-z0-9._~+/=-]{12,})")),
    # A string literal or value assigned to a name that says it holds a secret: .env files,
    # settings modules, JSON, keyword arguments. Quoted: any value.
    ("assignment", re.compile(
        # The lookbehind starts a name only at the start of its run: without it a long
        # run of name characters costs quadratic time (13 s for 8,000 characters).
        r"""(?P<pre>["']?(?<![A-Za-z0-9_.-])[A-Za-z0-9_.-]*""" + _SECRET_NAME + r"""[A-Za-z0-9_.-]*["']?\s*(?::=|=|:)\s*[bru]?["'])"""
        r"""(?P<secret>[^"'\n]{4,})""", re.I)),
    # Unquoted: only `NAME=value` (.env, shell; at a line start or after a space) or
    # `name: value` (YAML, at a line start), so `password = get_password()` stays as it is.
    ("assignment", re.compile(
        r"""(?P<pre>(?:^[ \t]*(?:export[ \t]+)?|(?<=[ \t]))[A-Za-z0-9_-]*""" + _SECRET_NAME
        + r"""[A-Za-z0-9_-]*=)""" + _UNQUOTED, re.I | re.M)),
    ("assignment", re.compile(
        r"""(?P<pre>^[ \t]*[A-Za-z0-9_-]*""" + _SECRET_NAME + r"""[A-Za-z0-9_-]*:[ \t]+)""" + _UNQUOTED,
        re.I | re.M)),
]

_TOKEN = re.compile(r"[A-Za-z0-9+/_=-]{24,}")


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _high_entropy(tok: str) -> bool:
    """A long random-looking token: letters and digits mixed, ~4+ bits per character.
    Identifiers (snake_case, CamelCase words) rarely reach that; keys and hashes do."""
    if not (re.search(r"[0-9]", tok) and re.search(r"[A-Za-z]", tok)):
        return False
    if tok.count("_") >= 3 or "REDACTED" in tok:
        return False  # long_snake_case_identifiers_with_v2 and our own markers
    return _entropy(tok) >= (3.0 if re.fullmatch(r"[0-9a-f]+", tok) else 4.0)


def redact(text: str | None) -> str | None:
    """`text` with secrets replaced by [REDACTED:kind]. None stays None."""
    if not text:
        return text
    for kind, pat in _RULES:
        if "secret" in pat.groupindex:
            text = pat.sub(lambda m, k=kind: m.group("pre") + (
                m.group("secret") if m.group("secret").startswith("[REDACTED") else _mark(k)), text)
        else:
            text = pat.sub(_mark(kind), text)
    return _TOKEN.sub(lambda m: _mark("high_entropy") if _high_entropy(m.group(0)) else m.group(0), text)


class RedactingFilter(logging.Filter):
    """Redacts log messages (after formatting their arguments) on a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a broken format string is logging's problem, not ours
            return True
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True
