"""An optional development workspace: a GPU pod with VS Code in the browser, on the task image.

The seed's author kept a GPU pod alive with a sleeping task to develop on; flytekit's
flyteinteractive plugin does this properly: `@vscode` starts code-server in the task's pod
(the task image, a GPU like the embed task), shuts down after `max_idle_seconds`
without activity, and "resume task" in VS Code runs the function below for real.

It is opt-in: the task exists only when the `interactive` extra is installed
(`pip install -e '.[interactive]'`), so a plain install never registers a GPU pod.

    register it with the other entities (README), then launch flytegpt.flyte.workspace.dev_workspace
    # then open the VS Code link on the execution page
"""

from __future__ import annotations

import json

from flytekit import task

from flytegpt.flyte import resources
from flytegpt.flyte.handoff import load_task_config
from flytegpt.flyte.image import WORKSPACE_IMAGE

try:  # the extra; without it this module defines no task
    from flytekitplugins.flyteinteractive import vscode
except ImportError:
    vscode = None

IDLE_SECONDS = 2 * 60 * 60  # an abandoned workspace gives its GPU back after two hours


def environment_report(config_path: str, store: str) -> str:
    """What a developer checks first on a new pod: the GPU, faiss, and the served index."""
    import faiss
    import torch

    from flytegpt.ingest.artifact import list_versions, read_latest

    config = load_task_config(config_path, store)
    return json.dumps(
        {
            "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "faiss_gpus": faiss.get_num_gpus(),
            "store": config.index.store,
            "latest": read_latest(config.index.store),
            "versions": list_versions(config.index.store)[-5:],
        }
    )


if vscode is not None:

    @task(
        container_image=WORKSPACE_IMAGE,
        requests=resources.EMBED,
        limits=resources.EMBED_LIMITS,
        accelerator=resources.embed_accelerator(),
    )
    @vscode(max_idle_seconds=IDLE_SECONDS)
    def dev_workspace(config_path: str = "ingest/sample/flytegpt.toml", store: str = "") -> str:
        """VS Code on a GPU pod; resuming the task reports the pod's GPU and the store's versions."""
        return environment_report(config_path, store)

else:
    dev_workspace = None
