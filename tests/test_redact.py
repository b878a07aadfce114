import logging
from pathlib import Path

import pytest

from ghost_lsp.feedback.redact import RedactingFilter, redact

DATA = Path(__file__).parent / "data" / "secrets"


def _cases(name):
    for line in (DATA / name).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            yield line.replace("\\n", "\n")


SECRETS = [tuple(c.split("\t", 1)) for c in _cases("secrets.txt")]


@pytest.mark.parametrize("secret,text", SECRETS, ids=[s[:12] for s, _ in SECRETS])
def test_secret_is_gone(secret, text):
    out = redact(text)
    assert secret not in out
    assert "[REDACTED:" in out


@pytest.mark.parametrize("text", list(_cases("clean.txt")))
def test_ordinary_code_unchanged(text):
    assert redact(text) == text


def test_context_around_a_secret_is_kept():
    assert redact('db = "postgres://admin:hunter2pass@db.example.com/app"') == \
        'db = "postgres://admin:[REDACTED:url_password]@db.example.com/app"'
    assert redact("DB_PASSWORD=correcthorsebattery\nDEBUG=1") == "DB_PASSWORD=[REDACTED:assignment]\nDEBUG=1"
    assert redact("password = get_password()") == "password = get_password()"
    assert redact(None) is None and redact("") == ""


def test_idempotent():
    for secret, text in SECRETS:
        once = redact(text)
        assert redact(once) == once


def test_log_filter_redacts_formatted_args(caplog):
    logger = logging.getLogger("ghost_lsp.test_redact")
    handler = logging.Handler()
    seen = []
    handler.emit = lambda record: seen.append(record.getMessage())
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("config has %s", "API_KEY=letmein123")
    finally:
        logger.removeHandler(handler)
    assert seen == ["config has API_KEY=[REDACTED:assignment]"]
