import pytest

from core import catalog


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "env"))
    assert catalog.cache_dir() == tmp_path / "env"
    assert catalog.cache_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"
    monkeypatch.delenv(catalog.CACHE_ENV)
    assert "seal" in str(catalog.cache_dir())


def test_resolve_local_folder_and_hub_id(tiny_model, tmp_path):
    assert catalog.resolve(tiny_model) == tiny_model
    assert catalog.resolve("org/some-model") == "org/some-model"  # a hub id passes through
    (tmp_path / "empty").mkdir()
    with pytest.raises(catalog.ModelNotFound, match="no config.json"):
        catalog.resolve(str(tmp_path / "empty"))


def test_unknown_builtin(tmp_path):
    with pytest.raises(catalog.ModelNotFound, match="built-ins: smollm2-135m-instruct"):
        catalog.materialize("gpt-17", tmp_path)


def test_list_models_reports_state(tmp_path):
    rows = catalog.list_models(tmp_path)
    assert {r["name"] for r in rows} == set(catalog.BUILTINS)
    assert not any(r["materialized"] for r in rows)


def test_cli_models_list(tmp_path, capsys):
    from orchestration.cli import main

    assert main(["models", "list", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "gemma3-270m" in out and "not fetched" in out


def test_cli_fetch_unknown_name_is_a_clear_error(tmp_path, capsys):
    from orchestration.cli import main

    assert main(["models", "fetch", "nope", "--cache", str(tmp_path)]) == 2
    assert "unknown built-in model 'nope'" in capsys.readouterr().err
