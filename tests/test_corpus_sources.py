"""The corpus's source rules: vendored and reserved copies never enter; the sdist fetcher picks
the newest final release and records what it skipped."""

import io
import json
import tarfile

import pytest

from ghost_lsp.tools.modelkit import fetch
from ghost_lsp.tools.modelkit.corpus import build_corpus, path_reject_reason, reserved_import_names

CODE = "\n".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(8))


def _sdist(path, name, version, files, licence="MIT"):
    with tarfile.open(path, "w:gz") as tf:
        def add(rel, text):
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-{version}/{rel}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        add("PKG-INFO", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense: {licence}\n")
        for rel, text in files.items():
            add(rel, text)


def test_path_rules_drop_vendored_folders_and_reserved_names():
    names = reserved_import_names({"more-itertools", "toolz", "attrs"})
    assert {"more_itertools", "toolz", "attr", "attrs"} <= names
    assert path_reject_reason("pip/_vendor/requests/api.py", names) == "vendored"
    assert path_reject_reason("pkg/third_party/x.py", names) == "vendored"
    assert path_reject_reason("setuptools/more_itertools/recipes.py", names) == "reserved-copy"
    assert path_reject_reason("pkg/toolz.py", names) == "reserved-copy"
    assert path_reject_reason("pkg/core/utils.py", names) is None


def test_a_copy_of_a_reserved_package_under_another_name_is_dropped(tmp_path):
    reserved_code = "\n".join(f"def reserved_helper_{i}(a, b):\n    return a * {i} - b\n" for i in range(30))
    sd, rs = tmp_path / "sdists", tmp_path / "reserved"
    sd.mkdir(), rs.mkdir()
    _sdist(rs / "toolz-1.0.tar.gz", "toolz", "1.0", {"toolz/itertoolz.py": reserved_code})
    _sdist(sd / "other-2.0.tar.gz", "other", "2.0", {"other/core.py": CODE, "other/copied.py": reserved_code,
                                                      "other/_vendor/six.py": CODE.replace("f", "g")})
    _sdist(sd / "gpl-1.0.tar.gz", "gpl", "1.0", {"gpl/x.py": CODE}, licence="GPL-3.0")
    reserved_file = tmp_path / "reserved.txt"
    reserved_file.write_text("toolz\n")
    m = build_corpus(tmp_path / "out", sdist_dir=sd, reserved_file=reserved_file, include_stdlib=False,
                     valid_fraction=0.0, reserved_sources=rs, progress=False)
    rows = [json.loads(l) for l in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["other/core.py"]
    other = next(p for p in m["packages"] if p["name"] == "other")
    assert other["dropped"] == {"reserved-copy": 1, "vendored": 1}
    assert {"package": "gpl", "reason": "licence not clearly permissive", "licence": ""} in m["refused"]
    assert m["reserved_files_indexed"] == 1


def test_fetcher_takes_the_newest_final_sdist_and_checks_its_hash(tmp_path, monkeypatch):
    blob = b"sdist bytes"
    import hashlib

    index = {"files": [
        {"filename": "demo-1.0.tar.gz", "url": "u1", "hashes": {}},
        {"filename": "demo-2.0.tar.gz", "url": "u2", "hashes": {"sha256": hashlib.sha256(blob).hexdigest()}},
        {"filename": "demo-3.0rc1.tar.gz", "url": "u3", "hashes": {}},
        {"filename": "demo-2.1-py3-none-any.whl", "url": "u4", "hashes": {}},
        {"filename": "demo-2.5.tar.gz", "url": "u5", "hashes": {}, "yanked": True},
    ]}

    class Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def urlopen(req, timeout=0):
        url = getattr(req, "full_url", req)
        if url.endswith("/demo/"):
            return Resp(json.dumps(index).encode())
        if url.endswith("/nothing/"):
            return Resp(json.dumps({"files": []}).encode())
        assert url == "u2", url
        return Resp(blob)

    monkeypatch.setattr(fetch.urllib.request, "urlopen", urlopen)
    monkeypatch.setenv("PIP_INDEX_URL", "https://index.invalid/simple")
    got = fetch.fetch_sdists(["demo", "nothing"], tmp_path, workers=1, progress=False)
    assert got["demo"] == {"file": "demo-2.0.tar.gz"} and (tmp_path / "demo-2.0.tar.gz").read_bytes() == blob
    assert got["nothing"]["final"] and "no sdist" in got["nothing"]["skipped"]
    index["files"][1]["hashes"]["sha256"] = "0" * 64
    (tmp_path / "demo-2.0.tar.gz").unlink()
    with pytest.raises(ValueError, match="sha256"):
        fetch.fetch_one("demo", tmp_path)
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "demo-2.0.tar.gz").exists()
