"""What each task asks the cluster for. One place, so sizing is reviewed together.

Registration-time settings (environment):
  FLYTEGPT_GPU            the accelerator for the embed task: T4 (default), L4, A10G, A100, H100, V100,
                          or "any" to take whatever GPU the cluster schedules
  FLYTEGPT_INTERRUPTIBLE  "0" keeps the GPU tasks and bulk Q&A off preemptible (spot) nodes; by
                          default they may run there, as the cluster's interruptible settings allow
"""

from __future__ import annotations

import os
from datetime import timedelta

from flytekit import Resources
from flytekit.extras import accelerators

ACCELERATORS = {
    "T4": accelerators.T4,
    "L4": accelerators.L4,
    "A10G": accelerators.A10G,
    "A100": accelerators.A100,
    "H100": accelerators.H100,
    "V100": accelerators.V100,
}


def embed_accelerator(name: str | None = None) -> accelerators.BaseAccelerator | None:
    """The GPU type for the embed task; a small model like MiniLM does not need more than a T4."""
    name = (name or os.environ.get("FLYTEGPT_GPU") or "T4").upper()
    if name == "ANY":
        return None
    try:
        return ACCELERATORS[name]
    except KeyError:
        raise ValueError(f"FLYTEGPT_GPU={name!r}: choose one of {', '.join(ACCELERATORS)} or 'any'") from None


# Reading sources: git clones and Slack API calls are I/O bound.
COLLECT = Resources(cpu="1", mem="2Gi")
# Splitting text: CPU only, memory for the documents of a large corpus.
CHUNK = Resources(cpu="2", mem="4Gi")
# Embedding: one GPU; the CPUs feed it tokenised batches, the memory holds torch + the vectors.
# Sized to fit the smallest T4 nodes (AWS g4dn.xlarge: 4 vCPUs, 16 GiB; GKE n1-standard-4 + T4:
# 15 GB), whose allocatable share is less than that once the kubelet and daemons take theirs.
EMBED = Resources(cpu="3", mem="12Gi", gpu="1")
EMBED_LIMITS = Resources(mem="12Gi", gpu="1")  # Kubernetes schedules GPUs by their limit
# Building the FAISS + keyword index: CPU and memory, roughly 2 KiB per chunk plus the vectors.
BUILD = Resources(cpu="2", mem="8Gi")
# Publishing: not "a single small write". ingest.artifact.publish opens the version to verify it
# before moving LATEST: every file is downloaded to a temporary folder and FAISS, the chunk table
# and the keyword index are loaded whole (peak RSS measured at 413 MiB for 50k chunks and 1.09 GiB
# for 150k, ~7.5 KiB a chunk; the files ~4.5 KB a chunk on disk). Flyte makes the limit equal to
# the request when only requests are set, so 512Mi was an OOM-kill past ~50k chunks, every night.
# Sized like BUILD, which holds the same index in memory, plus scratch disk for the download.
PUBLISH = Resources(cpu="1", mem=BUILD.mem, ephemeral_storage="16Gi")
# A publish lock left by a killed pod is only broken once it is LOCK_STALE_AFTER_S old
# (ingest/store.py; pods have their own hostnames, so the pid check cannot tell), and each attempt
# waits LOCK_WAIT_S for it before a StoreLockError, which flyte/retry.py makes recoverable: the
# attempts together must outwait the stale time, or the last retry fails on a lock nobody holds.
# (Waiting longer inside the task would need ingest.artifact.publish to pass a wait; this keeps the
# CLI's two-minute answer for a person at a terminal.) tests/flyte/test_recoverable.py checks it.
PUBLISH_RETRIES = 2
# A task that does next to nothing (the no-tuning branch's placeholder).
NOOP = Resources(cpu="100m", mem="256Mi")
# Bulk Q&A: loads the index and the query embedder; the chat model runs elsewhere.
ANSWER = Resources(cpu="2", mem="4Gi")

# Deadlines: a hung git clone, a stalled GPU or a chat endpoint that never answers must give the pod
# (and the GPU) back, and the nightly run must end before the next night's starts. Each is several
# times what a large corpus needs (tests/bench/RESULTS.md); a task past its deadline fails, and is
# retried when it has retries.
COLLECT_TIMEOUT = timedelta(hours=3)  # the first Slack crawl of a big workspace is rate-limited
CHUNK_TIMEOUT = timedelta(hours=1)
GPU_TIMEOUT = timedelta(hours=3)  # tune, and each embed shard
BUILD_TIMEOUT = timedelta(hours=1)  # plan, merge, build
PUBLISH_TIMEOUT = timedelta(minutes=15)
ANSWER_TIMEOUT = timedelta(hours=8)  # a backlog of thousands at the chat model's pace; resumed on retry
REPORT_TIMEOUT = timedelta(minutes=30)

# Preemptible nodes for the tasks that lose little when preempted: tune and embed are cached per
# shard, bulk Q&A resumes from its checkpoint. Flyte runs the last retry on an ordinary node.
INTERRUPTIBLE = os.environ.get("FLYTEGPT_INTERRUPTIBLE", "1").strip().lower() not in ("0", "false", "no", "off")
GPU_RETRIES = 2
