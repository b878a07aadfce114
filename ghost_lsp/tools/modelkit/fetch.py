"""Download source distributions for the training corpus: many at once, cached, resumable.

`pip download --no-binary :all:` builds each sdist's metadata (about 7 s of CPU a package here),
which is too slow for hundreds of packages. This reads pip's index (the PEP 691 JSON form of the
simple API, at pip's configured index URL) and fetches the newest final release's sdist file
directly, checking its sha256 from the index. The licence is not judged here: the corpus stage
reads it from the sdist's own PKG-INFO.

Resumable: a package whose sdist is already in the folder is not fetched again; `fetch.json` in
the folder records every package's outcome (file, or the reason it was skipped). A failure is
skipped with its reason, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
SDIST_SUFFIXES = (".tar.gz", ".zip", ".tgz", ".tar.bz2")
MAX_SDIST_BYTES = 60 * 1024 * 1024


def index_url() -> str:
    """pip's index: $PIP_INDEX_URL, pip's config, else pip's own default."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        try:
            from pip._internal.configuration import Configuration

            conf = Configuration(isolated=False)
            conf.load()
            url = dict(conf.items()).get("global.index-url")
        except Exception:  # pip internals moved: fall back to its default index
            url = None
    if not url:
        from pip._internal.models.index import PyPI

        url = PyPI.simple_url
    return url.rstrip("/")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version_of(filename: str, name: str):
    from pip._vendor.packaging.version import InvalidVersion, Version

    stem = filename
    for s in SDIST_SUFFIXES:
        if stem.endswith(s):
            stem = stem[: -len(s)]
            break
    # sdist names are "<name>-<version>"; the name part may use - _ . interchangeably
    parts = stem.rsplit("-", 1)
    if len(parts) != 2 or _norm(parts[0]) != _norm(name):
        return None
    try:
        v = Version(parts[1])
    except InvalidVersion:
        return None
    return None if (v.is_prerelease or v.is_devrelease) else v


def newest_sdist(name: str, *, index: str | None = None, timeout: float = 30) -> dict:
    """The index entry (filename, url, hashes, size) of the newest final sdist of `name`."""
    req = urllib.request.Request(f"{index or index_url()}/{_norm(name)}/", headers={"Accept": SIMPLE_JSON})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = json.load(r)
    best = None
    for f in data.get("files", []):
        fn = f.get("filename", "")
        if not fn.endswith(SDIST_SUFFIXES) or f.get("yanked"):
            continue
        v = _version_of(fn, name)
        if v is not None and (best is None or v > best[0]):
            best = (v, f)
    if best is None:
        raise LookupError("no sdist of a final release on the index")
    return best[1]


def fetch_one(name: str, dest: Path, *, index: str | None = None, timeout: float = 120) -> str:
    """Fetch `name`'s newest sdist into `dest`; returns its file name. Raises with the reason."""
    entry = newest_sdist(name, index=index, timeout=timeout)
    fn = Path(entry["filename"]).name
    target = dest / fn
    if target.exists():
        return fn
    size = entry.get("size")
    if size and size > MAX_SDIST_BYTES:
        raise ValueError(f"sdist is {size / 2**20:.0f} MiB (limit {MAX_SDIST_BYTES / 2**20:.0f})")
    with urllib.request.urlopen(entry["url"], timeout=timeout) as r:
        blob = r.read(MAX_SDIST_BYTES + 1)
    if len(blob) > MAX_SDIST_BYTES:
        raise ValueError("sdist over the size limit")
    want = (entry.get("hashes") or {}).get("sha256")
    if want and hashlib.sha256(blob).hexdigest() != want:
        raise ValueError("sha256 does not match the index")
    tmp = target.with_name(target.name + ".part")
    tmp.write_bytes(blob)
    tmp.replace(target)  # never leave a half-written sdist under its real name
    return fn


def fetch_sdists(names: list[str], dest: str | Path, *, workers: int = 8, progress: bool = True) -> dict:
    """Fetch many sdists; returns {name: {"file": ...} | {"skipped": reason}}, also in dest/fetch.json."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    log_path = dest / "fetch.json"
    try:
        done = json.loads(log_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        done = {}
    # a package whose file is there, or that was refused for a lasting reason, is not asked again
    todo = [n for n in dict.fromkeys(names)
            if not (("file" in done.get(n, {}) and (dest / done[n]["file"]).exists())
                    or done.get(n, {}).get("final"))]
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(fetch_one, n, dest): n for n in todo}
        for i, fut in enumerate(as_completed(futures), 1):
            n = futures[fut]
            try:
                done[n] = {"file": fut.result()}
            except LookupError as e:
                done[n] = {"skipped": str(e), "final": True}
            except urllib.error.HTTPError as e:
                done[n] = {"skipped": f"HTTP {e.code}", "final": e.code == 404}
            except ValueError as e:
                done[n] = {"skipped": str(e), "final": True}
            except Exception as e:  # network trouble: skipped now, tried again next run
                done[n] = {"skipped": f"{type(e).__name__}: {e}"}
            if progress and (i % 25 == 0 or i == len(todo)):
                ok = sum(1 for v in done.values() if "file" in v)
                print(f"fetch: {i}/{len(todo)} asked, {ok} sdists in hand, {time.time() - t0:.0f} s",
                      file=sys.stderr)
                log_path.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    log_path.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return done


if __name__ == "__main__":  # python -m ghost_lsp.tools.modelkit.fetch NAMES_FILE DEST
    lines = Path(sys.argv[1]).read_text(encoding="utf-8").splitlines()
    got = fetch_sdists([l.strip() for l in lines if l.strip() and not l.startswith("#")], sys.argv[2])
    print(sum(1 for v in got.values() if "file" in v), "sdists", file=sys.stderr)
