import json

import pytest

from ghost_lsp.paths import SHIPPED_MODEL
from ghost_lsp.settings.core import (DEFAULT_EXCLUDE, Settings, db_path, default_db_path, from_dict,
                                load_file, model_dir)


def test_defaults_are_complete():
    s, warnings = from_dict({})
    assert s == Settings() and warnings == []
    assert s.multiline == "auto" and s.exclude == DEFAULT_EXCLUDE


def test_camel_and_snake_case_and_section():
    s, warnings = from_dict({"ghost": {"maxNewTokens": 12, "top_p": 0.5, "multiline": "never"}})
    assert warnings == []
    assert (s.max_new_tokens, s.top_p, s.multiline) == (12, 0.5, "never")


@pytest.mark.parametrize("key,value", [
    ("maxNewTokens", "many"),
    ("max_new_tokens", 0),
    ("max_new_tokens", True),  # a bool is not a count
    ("temperature", 9.0),
    ("top_p", 0),
    ("n", 100),
    ("multiline", "sometimes"),
    ("enabled", "yes"),
    ("exclude", "**/.env"),
    ("log_level", "LOUD"),
])
def test_bad_value_warns_and_keeps_default(key, value):
    s, warnings = from_dict({key: value})
    assert s == Settings()
    assert len(warnings) == 1 and key in warnings[0] and "using" in warnings[0]


def test_unknown_key_warns():
    s, warnings = from_dict({"colour": "blue", "n": 2})
    assert s.n == 2
    assert warnings == ["settings: unknown key 'colour' ignored"]


def test_not_an_object():
    s, warnings = from_dict([1, 2])
    assert s == Settings() and len(warnings) == 1


def test_layers_later_override_earlier():
    file_layer, _ = from_dict({"n": 3, "temperature": 0.1})
    init_layer, _ = from_dict({"n": 2}, file_layer)
    change, _ = from_dict({"ghost": {"temperature": 0.9}}, init_layer)
    assert (change.n, change.temperature) == (2, 0.9)
    # a bad later value keeps the earlier layer's value, not the built-in default
    bad, warnings = from_dict({"n": -1}, change)
    assert bad.n == 2 and "using 2" in warnings[0]


def test_int_accepted_for_float_and_log_level_normalised():
    s, warnings = from_dict({"temperature": 1, "logLevel": "debug"})
    assert warnings == [] and s.temperature == 1.0 and s.log_level == "DEBUG"


def test_load_toml_and_json(tmp_path):
    toml = tmp_path / "ghost.toml"
    toml.write_text('[ghost]\nmax_new_tokens = 16\nexclude = ["*.secret"]\n')
    data, warnings = load_file(toml)
    assert warnings == [] and data == {"max_new_tokens": 16, "exclude": ["*.secret"]}
    s, _ = from_dict(data)
    assert s.exclude == ("*.secret",)

    js = tmp_path / "ghost.json"
    js.write_text(json.dumps({"n": 2}))
    assert load_file(js) == ({"n": 2}, [])


def test_load_bad_or_missing_file_warns(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("max_new_tokens = = 3")
    data, warnings = load_file(bad)
    assert data == {} and "not valid TOML" in warnings[0]
    data, warnings = load_file(tmp_path / "missing.json")
    assert data == {} and "cannot read" in warnings[0]


def test_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_db_path() == tmp_path / "ghost-lsp" / "feedback.db"
    assert db_path(Settings(db=str(tmp_path / "x.db"))) == tmp_path / "x.db"
    monkeypatch.setenv("GHOST_LSP_MODEL", str(tmp_path / "m"))
    assert model_dir(Settings()) == tmp_path / "m"
    assert model_dir(Settings(model="/opt/m")).as_posix() == "/opt/m"
    monkeypatch.delenv("GHOST_LSP_MODEL")
    assert model_dir(Settings()) == SHIPPED_MODEL


def test_section_of_change():
    from ghost_lsp.settings.core import section_of_change

    assert section_of_change({"ghost": {"n": 2}, "python": {}}) == {"n": 2}
    assert section_of_change({"maxNewTokens": 8}) == {"maxNewTokens": 8}  # flat (Helix)
    assert section_of_change({"python": {"analysis": 1}}) is None  # other sections only
    assert section_of_change(None) is None


def test_remote_model_settings():
    from ghost_lsp.engine.remote_request import DIALECTS
    from ghost_lsp.settings.core import REMOTE_DIALECTS

    assert REMOTE_DIALECTS == DIALECTS  # settings may not import the engine: the two lists agree
    s, warnings = from_dict({"remoteModelDir": "/m", "remoteContext": 4096, "remoteDialect": "llama.cpp"})
    assert not warnings and (s.remote_model_dir, s.remote_context, s.remote_dialect) == ("/m", 4096, "llama.cpp")
    s, warnings = from_dict({"remoteDialect": "tgi", "remoteContext": -1})
    assert len(warnings) == 2 and (s.remote_dialect, s.remote_context) == ("auto", 0)
    assert "one of auto, openai, vllm, llama.cpp, ghost-lsp" in " ".join(warnings)
