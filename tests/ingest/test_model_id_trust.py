"""A manifest's model id is data from the store: a local model folder it names is loaded only when
this machine's config names the same folder, so a store's manifest cannot make the bot load
another folder of this machine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from flytegpt.bot.cli import main
from flytegpt.ingest.artifact import ModelInfo, publish, write_version
from flytegpt.ingest.config import DEFAULT_MODEL, EmbeddingsConfig, load_config, sample_config_path
from flytegpt.ingest.embedding import Embedder, resolve_model_path

from support.index_data import make_chunks, make_vectors


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real copy of the packaged model in a folder of its own, as an operator's local model."""
    folder = tmp_path_factory.mktemp("models") / "mini"
    shutil.copytree(resolve_model_path(DEFAULT_MODEL), folder)
    return str(folder)


@pytest.mark.parametrize("make_id", [lambda f: f, lambda f: f + "/../mini", lambda f: "./" + Path(f).name])
def test_a_local_folder_the_config_does_not_name_is_refused(model_folder: str, make_id,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(model_folder).parent)
    with pytest.raises(ValueError, match=r"\[embeddings\] model = .*re-ingest"):
        Embedder.for_model_id(make_id(model_folder), EmbeddingsConfig())


def test_the_configured_folder_and_hub_ids_are_served(model_folder: str) -> None:
    assert Embedder.for_model_id(model_folder, EmbeddingsConfig(model=model_folder)).model_id == model_folder
    assert Embedder.for_model_id("acme/other", EmbeddingsConfig()).model_id == "acme/other"
    assert Embedder.for_model_id(DEFAULT_MODEL, EmbeddingsConfig()).model_id == DEFAULT_MODEL


def test_the_bot_and_search_refuse_a_version_naming_another_folder(tmp_path: Path, model_folder: str) -> None:
    from flytegpt.bot.index_holder import IndexHolder
    from flytegpt.bot.reload import Reloader

    store = tmp_path / "store"
    model = ModelInfo(model_id=model_folder, dimension=384, normalized=True)
    version = write_version(str(store), make_chunks(6, "a"), make_vectors(6, dim=384, seed=1), model)
    publish(str(store), version)

    reloader = Reloader(load_config(sample_config_path()).with_store(str(store)), IndexHolder())
    assert reloader.check_once() is False
    assert "does not name" in reloader.refused[version]

    result = CliRunner().invoke(main, ["search", "cache", "--config", str(sample_config_path()),
                                       "--store", str(store)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "[embeddings] model" in result.output
