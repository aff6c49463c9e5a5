"""`pyflyte package` serialises every Flyte entity offline; the compiled specs say what a cluster gets.

One packaging run (in a subprocess, from the repository root, as a maintainer would type it)
feeds all the assertions: the GPU request and accelerator of the embed task, cache settings
with code-derived versions, the nightly cron schedule and fixed inputs, the chat model key as
a secret request, and no secret anywhere among inputs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from support.paths import ROOT
REGISTRY = "registry.example.com/flytegpt-ci"
STORE = "s3://example-bucket/flytegpt/store"
SECRETISH = re.compile(r"key|token|secret|password|credential", re.I)


NOTIFY = "email:oncall@example.org,ml@example.org;slack:alerts-x1y2@example.slack.com"


def _package(tmp_path: Path, extra_pythonpath: str | None = None, env_overrides: dict | None = None) -> dict:
    from flyteidl.admin import launch_plan_pb2, task_pb2, workflow_pb2

    out = tmp_path / "flytegpt.tgz"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "TMPDIR": str(tmp),  # where the image's source is staged to compute its tag
        "FLYTEGPT_IMAGE_REGISTRY": REGISTRY,
        "FLYTEGPT_GPU": "L4",
        "FLYTEGPT_STORE": STORE,
        "FLYTE_IMG_FAST_FAIL": "false",
        "DOCKER_HOST": "unix:///nonexistent.sock",  # the image-exists probe must not find a daemon
        "FLYTEGPT_NOTIFY": NOTIFY,
    }
    env.pop("FLYTEGPT_CRON", None)
    env.pop("XDG_CACHE_HOME", None)  # images built are recorded under $HOME/.cache
    for name, value in (env_overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    if extra_pythonpath:
        env["PYTHONPATH"] = extra_pythonpath
    pyflyte = str(Path(sys.executable).parent / "pyflyte")
    proc = subprocess.run(
        [pyflyte, "--pkgs", "flytegpt.flyte", "package", "--image", "ghcr.io/example/unused:1", "-o", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not list(tmp.glob("flytegpt-image-src-*"))  # the staged copy is removed when packaging ends
    entities: dict = {"task": {}, "workflow": {}, "launch_plan": {}, "stderr": proc.stderr}
    with tarfile.open(out) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            kind = member.name.rsplit("_", 1)[1]  # <n>_<name>_<resource type>.pb
            if kind == "1.pb":
                spec = task_pb2.TaskSpec.FromString(data)
                entities["task"][spec.template.id.name] = spec
            elif kind == "2.pb":
                spec = workflow_pb2.WorkflowSpec.FromString(data)
                entities["workflow"][spec.template.id.name] = spec
            elif kind == "3.pb":
                spec = launch_plan_pb2.LaunchPlan.FromString(data)
                entities["launch_plan"][spec.id.name] = spec
    return entities


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    # A stand-in for the optional plugin: it re-exports flytekit's own @vscode, as the real one does.
    shim = tmp_path_factory.mktemp("shim")
    (shim / "flytekitplugins" / "flyteinteractive").mkdir(parents=True)
    (shim / "flytekitplugins" / "flyteinteractive" / "__init__.py").write_text(
        "from flytekit.interactive import vscode  # noqa: F401\n"
    )
    return _package(tmp_path_factory.mktemp("pkg"), extra_pythonpath=str(shim))


def _requests(task) -> dict[str, str]:
    from flyteidl.core import tasks_pb2

    names = tasks_pb2.Resources.ResourceName
    return {names.Name(r.name): r.value for r in task.template.container.resources.requests}


def _limits(task) -> dict[str, str]:
    from flyteidl.core import tasks_pb2

    names = tasks_pb2.Resources.ResourceName
    return {names.Name(r.name): r.value for r in task.template.container.resources.limits}


def test_everything_is_packaged(specs: dict) -> None:
    assert set(specs["task"]) >= {
        "flytegpt.flyte.ingest_wf.collect", "flytegpt.flyte.ingest_wf.chunk", "flytegpt.flyte.ingest_wf.plan",
        "flytegpt.flyte.ingest_wf.embed", "flytegpt.flyte.ingest_wf.merge", "flytegpt.flyte.ingest_wf.build",
        "flytegpt.flyte.ingest_wf.tune", "flytegpt.flyte.ingest_wf.all_cached",
        "flytegpt.flyte.ingest_wf.publish", "flytegpt.flyte.bulk_qa_wf.answer_questions",
    }
    assert _mapped_embed(specs)  # the embed step over shards
    assert {"flytegpt.flyte.ingest_wf.ingest_wf", "flytegpt.flyte.bulk_qa_wf.bulk_qa_wf"} <= set(specs["workflow"])
    assert "nightly_reingest" in specs["launch_plan"]


def _mapped_embed(specs: dict):
    """The task each shard of the embed step runs (map_task over `embed`)."""
    names = [n for n in specs["task"] if n.startswith("flytegpt.flyte.ingest_wf.map_embed_")]
    assert len(names) == 1, names
    return specs["task"][names[0]]


def test_embed_task_requests_a_gpu_of_the_chosen_type(specs: dict) -> None:
    for embed in (specs["task"]["flytegpt.flyte.ingest_wf.embed"], _mapped_embed(specs),
                  specs["task"]["flytegpt.flyte.ingest_wf.tune"]):
        assert _requests(embed)["GPU"] == "1"
        assert _limits(embed)["GPU"] == "1"
        assert embed.template.extended_resources.gpu_accelerator.device == "nvidia-l4"  # FLYTEGPT_GPU=L4
    for name in ("collect", "chunk", "plan", "all_cached", "merge", "build", "publish"):
        task = specs["task"][f"flytegpt.flyte.ingest_wf.{name}"]
        assert "GPU" not in _requests(task), f"{name} should not hold a GPU"
        assert not task.template.extended_resources.HasField("gpu_accelerator")


def test_cache_settings_use_code_derived_versions(specs: dict) -> None:
    from flytegpt.flyte import cache

    expected = {"chunk": cache.CHUNK_VERSION, "plan": cache.PLAN_VERSION, "embed": cache.EMBED_VERSION,
                "merge": cache.PLAN_VERSION, "build": cache.BUILD_VERSION, "tune": cache.TUNE_VERSION}
    for name, version in expected.items():
        meta = specs["task"][f"flytegpt.flyte.ingest_wf.{name}"].template.metadata
        assert meta.discoverable, name
        assert meta.discovery_version == version and re.fullmatch(r"[0-9a-f]{16}", version)
    # every shard is its own cache entry on a cluster: the mapped task carries embed's cache settings
    mapped = _mapped_embed(specs).template.metadata
    assert mapped.discoverable and mapped.discovery_version == cache.EMBED_VERSION
    assert list(specs["task"]["flytegpt.flyte.ingest_wf.build"].template.metadata.cache_ignore_input_vars) == [
        "source_stats", "embed_stats", "sources_read_at", "chunk_skips"
    ]
    # Reading sources and moving LATEST happen on every run.
    for name in ("collect", "publish"):
        assert not specs["task"][f"flytegpt.flyte.ingest_wf.{name}"].template.metadata.discoverable


def test_every_task_runs_in_the_one_image(specs: dict) -> None:
    images = {name: t.template.container.image for name, t in specs["task"].items()}
    main = {img for name, img in images.items() if not name.startswith("flytegpt.flyte.workspace.")}
    assert len(main) == 1, images
    (image,) = main
    assert image.startswith(f"{REGISTRY}/flytegpt:")


def test_publish_runs_after_build(specs: dict) -> None:
    wf = specs["workflow"]["flytegpt.flyte.ingest_wf.ingest_wf"].template
    node_of = {n.task_node.reference_id.name.rsplit(".", 1)[1]: n for n in wf.nodes if n.HasField("task_node")}
    assert node_of["build"].id in node_of["publish"].upstream_node_ids
    publish_inputs = {b.var: b.binding.promise.node_id for b in node_of["publish"].inputs}
    assert publish_inputs["version"] == node_of["build"].id  # LATEST can only name what build wrote


def test_only_the_planned_shards_go_to_the_gpu_and_none_when_all_are_cached(specs: dict) -> None:
    """plan (CPU) -> a conditional: the GPU map task over the shards of what is not embedded yet, or
    a CPU no-op when that is nothing -> merge, so a night with nothing new starts no GPU task."""
    wf = specs["workflow"]["flytegpt.flyte.ingest_wf.ingest_wf"].template
    node_of = {n.task_node.reference_id.name.rsplit(".", 1)[1]: n for n in wf.nodes if n.HasField("task_node")}
    branches = {n.metadata.name: n for n in wf.nodes if n.HasField("branch_node")}
    assert not [n for n in wf.nodes if n.HasField("array_node")]  # only inside the branch
    embedding = branches["embedding"]
    ifelse = embedding.branch_node.if_else
    from flyteidl.core import condition_pb2

    condition = ifelse.case.condition.comparison
    assert condition.left_value.var == f"{node_of['plan'].id}.to_embed"
    assert condition.operator == condition_pb2.ComparisonExpression.GT and condition.right_value.primitive.integer == 0
    assert node_of["plan"].id in embedding.upstream_node_ids
    mapped = ifelse.case.then_node
    assert mapped.array_node.node.task_node.reference_id.name.startswith("flytegpt.flyte.ingest_wf.map_embed_")
    # the same settings and the same (tuned) model for every shard
    assert sorted(mapped.array_node.bound_inputs) == ["settings", "tuned"]
    assert mapped.array_node.min_success_ratio == 1  # every shard, or no index
    inputs = {b.var: b.binding.promise for b in mapped.inputs}
    assert (inputs["chunks"].node_id, inputs["chunks"].var) == (node_of["plan"].id, "shards")
    assert ifelse.else_node.task_node.reference_id.name == "flytegpt.flyte.ingest_wf.all_cached"
    # the model comes from the "tuning" branch: the GPU tune task when tuning is not "off", else a CPU no-op
    tuning = branches["tuning"].branch_node.if_else
    assert tuning.case.then_node.task_node.reference_id.name == "flytegpt.flyte.ingest_wf.tune"
    assert tuning.else_node.task_node.reference_id.name == "flytegpt.flyte.ingest_wf.untuned"
    plan_inputs = {b.var: b.binding.promise.node_id for b in node_of["plan"].inputs}
    assert plan_inputs["tuned"] == inputs["tuned"].node_id == branches["tuning"].id
    merge_inputs = {b.var: b.binding.promise.node_id for b in node_of["merge"].inputs}
    assert merge_inputs["parts"] == embedding.id and merge_inputs["layout"] == node_of["plan"].id
    build_inputs = {b.var: b.binding.promise.node_id for b in node_of["build"].inputs}
    assert build_inputs["vectors"] == node_of["merge"].id


def test_nightly_launch_plan_is_a_daily_cron_with_fixed_inputs(specs: dict) -> None:
    lp = specs["launch_plan"]["nightly_reingest"]
    assert lp.spec.workflow_id.name == "flytegpt.flyte.ingest_wf.ingest_wf"
    cron = lp.spec.entity_metadata.schedule.cron_schedule.schedule
    minute, hour, dom, month, dow = cron.split()
    assert (dom, month, dow) == ("*", "*", "*") and minute.isdigit() and hour.isdigit()  # once a day
    fixed = {k: v.scalar.primitive.string_value for k, v in lp.spec.fixed_inputs.literals.items()}
    assert fixed == {"config_path": "ingest/sample/flytegpt.toml", "store": STORE}


def test_every_task_has_a_deadline_and_the_gpu_tasks_retry_on_preemptible_nodes(specs: dict) -> None:
    """A hung clone, GPU or chat endpoint gives the pod back; the cheap-to-redo tasks may use spot nodes."""
    from flytegpt.flyte import resources

    for name, task in specs["task"].items():
        if name.startswith("flytegpt.flyte.workspace."):
            continue  # the workspace has its own idle timeout
        assert task.template.metadata.timeout.seconds > 0, f"{name} has no timeout"
    meta = {n.rsplit(".", 1)[1]: t.template.metadata for n, t in specs["task"].items()}
    assert meta["collect"].timeout.seconds == resources.COLLECT_TIMEOUT.total_seconds()
    for name in ("embed", "tune", "answer_questions"):
        assert meta[name].interruptible, name
        assert meta[name].retries.retries >= 1, name
    assert _mapped_embed(specs).template.metadata.interruptible
    for name in ("collect", "build", "publish", "weekly_report"):
        assert not meta[name].interruptible, name


def test_a_launch_by_hand_defaults_to_the_registered_config_and_store(specs: dict) -> None:
    """The UI's "Launch" (or `flytectl get launchplan --execFile`) of any workflow reads what the
    schedules read, not the sample config and a folder inside the pod."""
    for workflow in ("ingest_wf.ingest_wf", "bulk_qa_wf.bulk_qa_wf", "report_wf.report_wf"):
        lp = specs["launch_plan"][f"flytegpt.flyte.{workflow}"]
        defaults = {k: p.default.scalar.primitive.string_value for k, p in lp.spec.default_inputs.parameters.items()
                    if k in ("config_path", "store")}
        assert defaults == {"config_path": "ingest/sample/flytegpt.toml", "store": STORE}, workflow


def _import_workflows(config: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLYTEGPT_CONFIG": config}
    return subprocess.run([sys.executable, "-c", "import flytegpt.flyte.ingest_wf"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("config, says", [
    ("deploy/no-such-flytegpt.toml", "is not a file in"),
    ("manifests/base/flytegpt.toml", "removes manifests/"),  # a file of the checkout the image deletes
])
def test_registering_a_config_the_tasks_would_not_find_warns(config: str, says: str) -> None:
    proc = _import_workflows(config)
    assert proc.returncode == 0, proc.stderr  # a warning: registration tools must still import
    assert f"warning: FLYTEGPT_CONFIG={config}" in proc.stderr and says in proc.stderr


def test_a_config_the_image_keeps_registers_quietly() -> None:
    for config in ("ingest/sample/flytegpt.toml", "s3://bucket/flytegpt.toml"):
        proc = _import_workflows(config)
        assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


def _secrets(task) -> list[tuple[str, str, str]]:
    return [(s.group, s.key, s.env_var) for s in task.template.security_context.secrets]


def test_secrets_are_requested_as_env_vars_settings_reads(specs: dict) -> None:
    from flyteidl.core import security_pb2

    from flytegpt.ingest.config import Settings

    aliases = {f.alias for f in Settings.model_fields.values()}
    expected = {
        "flytegpt.flyte.bulk_qa_wf.answer_questions": [("flytegpt", "openai_api_key", "OPENAI_API_KEY")],
        "flytegpt.flyte.ingest_wf.collect": [("flytegpt", "slack_bot_token", "SLACK_BOT_TOKEN")],
    }
    for name, task in specs["task"].items():
        assert _secrets(task) == expected.get(name, []), name
        for secret in task.template.security_context.secrets:
            assert secret.mount_requirement == security_pb2.Secret.MountType.ENV_VAR
            assert secret.env_var in aliases


def test_no_secrets_among_inputs(specs: dict) -> None:
    for kind in ("task", "workflow"):
        for name, spec in specs[kind].items():
            inputs = spec.template.interface.inputs.variables
            assert not [v for v in inputs if SECRETISH.search(v)], f"{kind} {name} takes a secret-like input"
    for name, lp in specs["launch_plan"].items():
        text = str(lp.spec.fixed_inputs) + str(lp.spec.default_inputs)
        assert not re.search(r"xox[abp]-|xapp-|sk-[A-Za-z0-9]", text), f"launch plan {name} holds a token"
        for var in list(lp.spec.fixed_inputs.literals) + list(lp.spec.default_inputs.parameters):
            assert not SECRETISH.search(var)


def test_dev_workspace_is_a_gpu_task_when_the_extra_is_installed(specs: dict) -> None:
    task = specs["task"]["flytegpt.flyte.workspace.dev_workspace"]
    assert _requests(task)["GPU"] == "1"
    assert task.template.container.image.startswith(f"{REGISTRY}/flytegpt:")


def test_dev_workspace_is_absent_without_the_extra() -> None:
    try:
        import flytekitplugins.flyteinteractive  # noqa: F401

        pytest.skip("the interactive extra is installed here")
    except ImportError:
        pass
    import flytegpt.flyte.workspace

    assert flytegpt.flyte.workspace.dev_workspace is None


def _notifications(lp) -> list[tuple[str, list[str], list[str]]]:
    from flyteidl.core import execution_pb2

    phases = execution_pb2.WorkflowExecution.Phase
    return [(n.WhichOneof("type"), sorted(phases.Name(p) for p in n.phases),
             list(getattr(n, n.WhichOneof("type")).recipients_email)) for n in lp.spec.entity_metadata.notifications]


def test_scheduled_runs_notify_on_failure_when_asked(specs: dict) -> None:
    """FLYTEGPT_NOTIFY at registration: a failed, timed-out or aborted scheduled run is heard of."""
    expected = [("email", ["ABORTED", "FAILED", "TIMED_OUT"], ["oncall@example.org", "ml@example.org"]),
                ("slack", ["ABORTED", "FAILED", "TIMED_OUT"], ["alerts-x1y2@example.slack.com"])]
    for name in ("nightly_reingest", "weekly_report"):
        assert _notifications(specs["launch_plan"][name]) == expected, name
    assert not any(v in specs["stderr"] for v in ("FLYTEGPT_STORE", "FLYTEGPT_IMAGE_REGISTRY", "FLYTEGPT_NOTIFY"))


def test_packaging_without_the_deploy_variables_warns_and_adds_no_notifications(tmp_path: Path) -> None:
    """Without FLYTEGPT_STORE the schedules get the placeholder (which their runs refuse), without
    FLYTEGPT_IMAGE_REGISTRY the sandbox's registry: packaging says so. No FLYTEGPT_NOTIFY: none."""
    specs = _package(tmp_path, env_overrides={"FLYTEGPT_STORE": None, "FLYTEGPT_IMAGE_REGISTRY": None,
                                              "FLYTEGPT_NOTIFY": None})
    assert "warning: FLYTEGPT_STORE is not set" in specs["stderr"]
    assert "warning: FLYTEGPT_IMAGE_REGISTRY is not set" in specs["stderr"]
    assert "warning: FLYTEGPT_NOTIFY is not set: a failed scheduled run is seen only in the Flyte console" \
        in specs["stderr"]
    for name in ("nightly_reingest", "weekly_report"):
        assert _notifications(specs["launch_plan"][name]) == [], name


def test_a_malformed_notify_setting_fails_the_import() -> None:
    env = {**os.environ, "FLYTEGPT_NOTIFY": "mail:oncall"}
    proc = subprocess.run([sys.executable, "-c", "import flytegpt.flyte.ingest_wf"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "FLYTEGPT_NOTIFY entry 'mail:oncall'" in proc.stderr


def test_publish_has_the_memory_and_disk_to_verify_a_large_index(specs: dict) -> None:
    """publish opens the whole version to verify it (413 MiB at 50k chunks, 1.09 GiB at 150k):
    it gets what build gets, and scratch disk for the download."""
    publish, build = (specs["task"][f"flytegpt.flyte.ingest_wf.{n}"] for n in ("publish", "build"))
    assert _requests(publish)["MEMORY"] == _requests(build)["MEMORY"] == "8Gi"
    assert _requests(publish)["EPHEMERAL_STORAGE"] == "16Gi"


def test_packaging_warns_about_a_task_image_not_built_here(specs: dict, tmp_path: Path) -> None:
    """pyflyte package registers the image tag the code gives without building it: packaging says
    when `python -m flytegpt.flyte.image` did not build that tag on this machine, and is quiet once it did."""
    assert "was not built from this code on this machine" in specs["stderr"]
    env = {**os.environ, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"),
           "FLYTEGPT_IMAGE_REGISTRY": REGISTRY}
    env.pop("XDG_CACHE_HOME", None)
    (tmp_path / "tmp").mkdir()
    name = subprocess.run([sys.executable, "-c", "from flytegpt.flyte.image import IMAGE; print(IMAGE.image_name())"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    assert name.startswith(f"{REGISTRY}/flytegpt:") and name in specs["stderr"]
    built = tmp_path / "home" / ".cache" / "flytegpt" / "built-images.txt"
    built.parent.mkdir(parents=True)
    built.write_text(f"{REGISTRY}/flytegpt:older-tag\n{name}\n")  # what the image command records
    quiet = _package(tmp_path)
    assert "was not built" not in quiet["stderr"], quiet["stderr"]
