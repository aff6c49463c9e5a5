"""The secrets Flyte tasks request: one Kubernetes Secret `flytegpt` in the execution namespace.

Secrets are never task inputs: inputs are stored in plain text in Flyte's metadata and shown
in the UI. On a cluster Flyte injects each requested key as the environment variable that
ingest.config.Settings reads; locally, export that variable (or flytekit's
`_FSEC_FLYTEGPT_<KEY>`). Create it once per project-domain namespace:

    kubectl -n flytegpt-production create secret generic flytegpt \
        --from-literal=openai_api_key=sk-... --from-literal=slack_bot_token=xoxb-...

A requested key must exist for the pod to start: put any placeholder in `slack_bot_token`
if no source is `slack_api`; without a usable OpenAI key bulk Q&A answers offline.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from flytekit import Secret, current_context

GROUP = "flytegpt"

OPENAI_API_KEY = Secret(group=GROUP, key="openai_api_key", mount_requirement=Secret.MountType.ENV_VAR,
                        env_var="OPENAI_API_KEY")
SLACK_BOT_TOKEN = Secret(group=GROUP, key="slack_bot_token", mount_requirement=Secret.MountType.ENV_VAR,
                         env_var="SLACK_BOT_TOKEN")


def secret_value(secret: Secret) -> str | None:
    """The secret's value however Flyte delivered it (its env var, a file, flytekit's _FSEC_ var).

    None when absent or empty: an empty key must not count as "configured".
    """
    assert secret.env_var is not None
    value = (os.environ.get(secret.env_var) or "").strip()
    if value:
        return value
    try:
        value = current_context().secrets.get(secret.group, secret.key).strip()
    except ValueError:  # not provided: the caller's fallback (offline answers, no Slack source) applies
        return None
    return value or None


@contextmanager
def secrets_in_env(*secrets: Secret) -> Iterator[None]:
    """Expose the secrets as the env vars Settings reads, for this block only (local runs share a process)."""
    saved = {s.env_var: os.environ.get(s.env_var) for s in secrets if s.env_var}
    try:
        for secret in secrets:
            value = secret_value(secret)
            if value is None:
                os.environ.pop(secret.env_var, None)
            else:
                os.environ[secret.env_var] = value
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
