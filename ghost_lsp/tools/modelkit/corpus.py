"""Training corpus: Python source from the standard library and permissively licensed sdists.

Steps: collect files per package → filter (non-UTF-8, huge, minified, generated) → deduplicate
(exact hash, then near-duplicates by MinHash over line shingles) → split train/validation *by
package* (so validation measures code the model has never seen a sibling file of) → write
`train.jsonl`, `valid.jsonl` and `corpus.json` (the manifest: packages, versions, licences, counts).

Packages listed in data/eval-reserved.txt are never read: they are kept for evaluation. Nor are
their copies inside other sdists: vendored folders (`_vendor/`, `extern/`, `third_party/`, …) are
dropped whole, any file under a folder or module named like a reserved package's import name is
dropped, and, when the reserved packages' own sources are given (`reserved_sources`), any file that
near-duplicates one of their files is dropped too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sysconfig
import tarfile
import zipfile
from dataclasses import asdict, dataclass, field
from email.parser import Parser
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ghost_lsp.tools.modelkit.dedup import NearDuplicateIndex  # noqa: F401 (re-exported)
from ghost_lsp.tools.reserved import load_reserved, normalise_name  # noqa: F401 - names of this module too

log = logging.getLogger(__name__)

# Licences we may train on and ship a model of: permissive only (no copyleft, no "unknown").
PERMISSIVE = [
    ("mit", "MIT"), ("bsd", "BSD"), ("apache", "Apache-2.0"), ("psf", "PSF-2.0"),
    ("python software foundation", "PSF-2.0"), ("isc", "ISC"), ("unlicense", "Unlicense"),
    ("zlib", "Zlib"), ("0bsd", "0BSD"), ("cc0", "CC0-1.0"),
]
COPYLEFT = ("gpl", "lgpl", "agpl", "mpl", "mozilla", "eupl", "cddl", "epl", "copyleft")

MAX_FILE_BYTES = 200_000
MAX_LINE_CHARS = 1_000
MAX_MEAN_LINE_CHARS = 100
MIN_LINES = 5
# A package's text beyond this is not read: one huge package (a cloud SDK, a big framework)
# should not outweigh a hundred small ones.
MAX_PACKAGE_CHARS = 4_000_000
VENDOR_DIRS = {"_vendor", "vendor", "vendored", "_vendored", "extern", "_extern", "externals",
               "third_party", "thirdparty", "_third_party", "site-packages", "node_modules"}
# Import names of reserved packages whose PyPI name differs from the module a vendored copy uses.
RESERVED_IMPORT_NAMES = {"attrs": {"attr", "attrs"}, "more-itertools": {"more_itertools"},
                         "python-slugify": {"slugify"}, "pyparsing": {"pyparsing"}}
GENERATED_MARKERS = re.compile(
    r"(auto-?generated|generated (?:by|from)|do not edit|@generated|this file was generated)", re.I
)


@dataclass
class Document:
    package: str
    path: str
    text: str


@dataclass
class PackageInfo:
    name: str
    version: str
    licence: str
    source: str  # "stdlib" or the sdist file name
    split: str = "train"
    files: int = 0
    chars: int = 0
    dropped: dict = field(default_factory=dict)


def classify_licence(fields: dict[str, list[str]]) -> str | None:
    """Return a permissive licence id from package metadata, or None if not clearly permissive.

    Reads License-Expression, License and "License ::" classifiers. Anything mentioning a
    copyleft licence is refused even when a permissive one is also named.
    """
    texts = list(fields.get("license-expression", [])) + list(fields.get("license", []))
    texts += [c for c in fields.get("classifier", []) if c.lower().startswith("license ::")]
    joined = " | ".join(t for t in texts if t).lower()
    if not joined.strip():
        return None
    if any(re.search(rf"\b{w}\b", joined) for w in COPYLEFT):
        return None
    for needle, ident in PERMISSIVE:
        if re.search(rf"\b{re.escape(needle)}\b", joined):
            return ident
    return None


def parse_pkg_info(text: str) -> dict[str, list[str]]:
    msg = Parser().parsestr(text, headersonly=True)
    out: dict[str, list[str]] = {}
    for key, value in msg.items():
        # The License field may hold the whole licence text; its first line is enough to classify.
        out.setdefault(key.lower(), []).append(str(value).strip().splitlines()[0] if value else "")
    return out


def reserved_import_names(reserved: set[str]) -> set[str]:
    """The folder/module names under which a reserved package's code would appear when vendored."""
    out: set[str] = set()
    for name in reserved:
        out |= RESERVED_IMPORT_NAMES.get(name, {name.replace("-", "_")})
    return out


def path_reject_reason(rel: str, reserved_names: set[str]) -> str | None:
    """Why a file should be dropped for where it sits: a vendored folder or a reserved package's name."""
    parts = rel.replace("\\", "/").split("/")
    if any(p.lower() in VENDOR_DIRS for p in parts[:-1]):
        return "vendored"
    stems = set(parts[:-1]) | {parts[-1].removesuffix(".py")}
    if stems & reserved_names:
        return "reserved-copy"
    return None


def reject_reason(text: str) -> str | None:
    """Why a file should not be trained on, or None to keep it."""
    if len(text.encode("utf-8")) > MAX_FILE_BYTES:
        return "huge"
    lines = text.splitlines()
    if len(lines) < MIN_LINES:
        return "short"
    if max(len(l) for l in lines) > MAX_LINE_CHARS or len(text) / len(lines) > MAX_MEAN_LINE_CHARS:
        return "minified"
    if GENERATED_MARKERS.search("\n".join(lines[:5])):
        return "generated"
    return None


def decode(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


# ---------------------------------------------------------------- sources


def stdlib_packages(stdlib_dir: str | None = None) -> Iterator[tuple[PackageInfo, list[tuple[str, bytes]]]]:
    """Each top-level stdlib module or package is one 'package' for the split.

    The regression-test package `test` (about 60 % of the stdlib's text, very repetitive)
    and `site-packages` are left out.
    """
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    groups: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        top = rel.parts[0].removesuffix(".py")
        if top in ("site-packages", "test", "dist-packages") or "__pycache__" in rel.parts:
            continue
        groups.setdefault(top, []).append(p)
    import sys

    version = ".".join(map(str, sys.version_info[:3]))
    for top, paths in groups.items():
        files = []
        for p in paths:
            try:
                files.append((str(p.relative_to(root)), p.read_bytes()))
            except OSError:
                continue
        yield PackageInfo(f"stdlib-{top}", version, "PSF-2.0", "stdlib"), files


def _sdist_members(path: Path) -> Iterator[tuple[str, bytes]]:
    if path.name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar")):
        with tarfile.open(path) as tf:
            for m in tf:
                if m.isfile() and (m.name.endswith(".py") or m.name.endswith("PKG-INFO")):
                    f = tf.extractfile(m)
                    if f is not None:
                        yield m.name, f.read()
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if name.endswith(".py") or name.endswith("PKG-INFO"):
                    yield name, zf.read(name)


def sdist_package(path: Path) -> tuple[PackageInfo | None, list[tuple[str, bytes]], str]:
    """Read one sdist. Returns (info or None, files, reason when refused)."""
    members = list(_sdist_members(path))
    pkg_infos = sorted((n for n, _ in members if n.endswith("PKG-INFO")), key=lambda n: n.count("/"))
    if not pkg_infos:
        return None, [], "no PKG-INFO"
    meta = parse_pkg_info(dict(members)[pkg_infos[0]].decode("utf-8", "replace"))
    name = (meta.get("name") or [""])[0]
    version = (meta.get("version") or [""])[0]
    licence = classify_licence(meta)
    if not name:
        return None, [], "no name in PKG-INFO"
    info = PackageInfo(normalise_name(name), version, licence or "", path.name)
    if licence is None:
        return info, [], "licence not clearly permissive"
    # drop the sdist's top folder ("pkg-1.0/") from paths
    files = [(n.split("/", 1)[-1], data) for n, data in members if n.endswith(".py")]
    return info, files, ""


# ---------------------------------------------------------------- build


def is_validation(package: str, fraction: float, forced: Iterable[str] = ()) -> bool:
    if package in set(forced):
        return True
    h = int.from_bytes(hashlib.sha256(package.encode()).digest()[:4], "big")
    return h / 2**32 < fraction


def build_corpus(
    out_dir: str | Path,
    *,
    sdist_dir: str | Path | None = None,
    reserved_file: str | Path | None = None,
    include_stdlib: bool = True,
    stdlib_dir: str | None = None,
    valid_fraction: float = 0.06,
    valid_packages: Iterable[str] = (),
    reserved_sources: str | Path | None = None,
    max_package_chars: int = MAX_PACKAGE_CHARS,
    progress: bool = True,
) -> dict:
    """Build the corpus into `out_dir`; return the manifest (also written as corpus.json).

    `reserved_sources`: a folder of the reserved packages' own sdists; any corpus file that
    near-duplicates one of their files is dropped ("reserved-copy").
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reserved = load_reserved(reserved_file) if reserved_file else set()
    reserved_names = reserved_import_names(reserved)
    reserved_index = NearDuplicateIndex(threshold=0.5)
    reserved_indexed = 0
    if reserved_sources and Path(reserved_sources).is_dir():
        for path in sorted(Path(reserved_sources).iterdir()):
            if not path.is_file() or path.name.endswith(".part"):
                continue
            try:
                _, files, _ = sdist_package(path)
            except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError):
                continue
            for _, data in files:
                text = decode(data)
                if text and reject_reason(text) is None:
                    dup, sig = reserved_index.find(text)
                    if sig is not None:
                        reserved_index.add(sig)
                        reserved_indexed += 1
    sources: list = []
    refused: list[dict] = []
    if include_stdlib:
        sources.extend(stdlib_packages(stdlib_dir))
    if sdist_dir:
        for path in sorted(Path(sdist_dir).iterdir()):
            if not path.is_file():
                continue
            if path.name.endswith(".part") or path.name == "fetch.json":
                continue
            try:
                info, files, why = sdist_package(path)
            except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, ValueError) as e:
                refused.append({"package": path.name, "reason": f"unreadable sdist: {e}"})
                continue
            name = info.name if info else path.name
            if info and normalise_name(info.name) in reserved:
                refused.append({"package": name, "reason": "reserved for evaluation"})
                continue
            if why:
                refused.append({"package": name, "reason": why, "licence": info.licence if info else ""})
                continue
            sources.append((info, files))

    exact: set[bytes] = set()
    near = NearDuplicateIndex()
    forced = list(valid_packages)
    packages: list[PackageInfo] = []
    counts = {"train": [0, 0], "valid": [0, 0]}
    iterator = sources
    if progress:
        try:
            from tqdm import tqdm

            iterator = tqdm(sources, desc="corpus", unit="pkg", file=__import__("sys").stderr)
        except ImportError:
            pass
    with open(out / "train.jsonl", "w", encoding="utf-8") as ftrain, open(out / "valid.jsonl", "w", encoding="utf-8") as fvalid:
        for info, files in iterator:
            if normalise_name(info.name) in reserved:
                refused.append({"package": info.name, "reason": "reserved for evaluation"})
                continue
            info.split = "valid" if is_validation(info.name, valid_fraction, forced) else "train"
            sink = fvalid if info.split == "valid" else ftrain
            for rel, data in files:
                why = path_reject_reason(rel, reserved_names)
                text = None if why else decode(data)
                if why is None:
                    why = "non-utf8" if text is None else reject_reason(text)
                if why is None and info.chars + len(text) > max_package_chars:
                    why = "package-cap"
                if why is None and reserved_indexed and reserved_index.find(text)[0]:
                    why = "reserved-copy"
                if why is None:
                    digest = hashlib.sha256(text.encode()).digest()
                    if digest in exact:
                        why = "exact-duplicate"
                    else:
                        exact.add(digest)
                        if not near.add_if_new(text):
                            why = "near-duplicate"
                if why:
                    info.dropped[why] = info.dropped.get(why, 0) + 1
                    continue
                sink.write(json.dumps({"package": info.name, "path": rel, "text": text}) + "\n")
                info.files += 1
                info.chars += len(text)
            counts[info.split][0] += info.files
            counts[info.split][1] += info.chars
            packages.append(info)
    manifest = {
        "packages": [asdict(p) for p in packages],
        "refused": refused,
        "reserved_excluded": sorted(reserved),
        "reserved_files_indexed": reserved_indexed,
        "totals": {k: {"files": v[0], "chars": v[1]} for k, v in counts.items()},
    }
    (out / "corpus.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def read_documents(path: str | Path) -> Iterator[Document]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            yield Document(d["package"], d["path"], d["text"])
