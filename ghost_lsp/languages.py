"""The one language table: file suffixes → LSP language id, and what the stages need to know of
each language (its comment and string syntax for the filters and the prompt's path header, and
whether its blocks close with braces).

An editor names the language of a document itself (`languageId`); this table serves when it does
not, and for files read from disk (`ghost-lsp complete`, open files, the project index).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath


@dataclass(frozen=True)
class Language:
    id: str
    suffixes: tuple[str, ...] = ()
    line_comment: str | None = None
    block_comment: tuple[str, str] | None = None
    quotes: tuple[str, ...] = ('"',)  # longest first: '"""' before '"'
    braces: bool = False  # blocks close with '}' (the end-of-block and syntax filters)


_HASH = dict(line_comment="#", quotes=('"', "'"))
_C = dict(line_comment="//", block_comment=("/*", "*/"), quotes=('"', "'", "`"), braces=True)

LANGUAGES: tuple[Language, ...] = (
    Language("python", (".py", ".pyi"), "#", None, ('"""', "'''", '"', "'")),
    Language("ruby", (".rb",), **_HASH),
    Language("shellscript", (".sh",), **_HASH),
    Language("toml", (".toml",), **_HASH),
    Language("yaml", (".yaml", ".yml"), **_HASH),
    Language("perl", (), **_HASH),
    Language("r", (), **_HASH),
    Language("makefile", (), **_HASH),
    Language("lua", (".lua",), "--", None, ('"', "'")),
    Language("rust", (".rs",), "//", ("/*", "*/"), ('"',), braces=True),  # ' starts lifetimes as often as chars
    Language("c", (".c", ".h"), **_C),
    Language("cpp", (".cpp",), **_C),
    Language("java", (".java",), **_C),
    Language("javascript", (".js",), **_C),
    Language("typescript", (".ts",), **_C),
    Language("go", (".go",), **_C),
    Language("json", (".json",), **_C),
    *(Language(name, (), **_C) for name in ("csharp", "javascriptreact", "typescriptreact", "kotlin", "scala",
                                              "swift", "php", "dart", "jsonc", "css", "scss", "less")),
    Language("markdown", (".md",)),
)

PLAINTEXT = Language("plaintext")
BY_ID = {lang.id: lang for lang in LANGUAGES}
BY_SUFFIX = {suffix: lang.id for lang in LANGUAGES for suffix in lang.suffixes}
BRACE_LANGUAGES = frozenset(lang.id for lang in LANGUAGES if lang.braces)
DEFAULT_COMMENT = "#"  # the path header's comment where a language has none of its own


def language_of(language_id: str) -> Language:
    return BY_ID.get(language_id, PLAINTEXT)


def language_for_path(path: str, default: str = "plaintext") -> str:
    """The language id of a file, by its suffix (any case)."""
    return BY_SUFFIX.get(PurePath(path).suffix.lower(), default)


def comment_for(language_id: str) -> str:
    return language_of(language_id).line_comment or DEFAULT_COMMENT
