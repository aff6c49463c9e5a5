"""Cache versions follow the code and the model, with nobody remembering to bump them."""

from __future__ import annotations

from pathlib import Path

from flytegpt.flyte.cache import BUILD_VERSION, CHUNK_VERSION, EMBED_VERSION, TUNE_VERSION, cache_version


def _tree(root: Path) -> Path:
    (root / "sources").mkdir(parents=True)
    (root / "chunking.py").write_text("def chunk(): return 1\n")
    (root / "sources" / "docs.py").write_text("def load(): pass\n")
    return root


def test_version_is_stable_and_changes_with_the_code(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ingest")
    modules = ("chunking.py", "sources/*.py")
    v1 = cache_version(modules, root=root)
    assert v1 == cache_version(modules, root=root) and len(v1) == 16
    (root / "chunking.py").write_text("def chunk(): return 2\n")  # a behaviour change
    v2 = cache_version(modules, root=root)
    assert v2 != v1
    (root / "sources" / "slack_api.py").write_text("")  # a new loader
    assert cache_version(modules, root=root) != v2


def test_model_and_missing_modules_count(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ingest")
    base = cache_version(("chunking.py",), root=root)
    assert cache_version(("chunking.py",), root=root, model_id="a/model") != base
    assert cache_version(("chunking.py",), root=root, model_id="a/model") != cache_version(
        ("chunking.py",), root=root, model_id="b/model")
    # a module that appears later must change the version, so absence is part of the hash
    assert cache_version(("chunking.py", "later.py"), root=root) != base


def test_tasks_get_distinct_versions_of_the_real_code() -> None:
    assert len({CHUNK_VERSION, EMBED_VERSION, BUILD_VERSION, TUNE_VERSION}) == 4
    assert all(v != "0.0.0" and len(v) == 16 for v in (CHUNK_VERSION, EMBED_VERSION, BUILD_VERSION, TUNE_VERSION))
