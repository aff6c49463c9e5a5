"""Cache keys for task outputs: when may a stored result be reused?"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

DEFAULT_SALT = "minikit"


def stable_hash(value: Any) -> str:
    """A hash that is the same in every process (Python's hash() is salted per run)."""
    data = json.dumps(value, sort_keys=True, default=repr).encode()
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CachePolicy:
    """How a task's cache key is built.

    `version` must change whenever the task's logic changes; editing the function body
    alone does not invalidate old results. `ignored_inputs` are left out of the key.
    `hashers` map an input name to a function that hashes its contents.
    """

    version: str
    ignored_inputs: tuple[str, ...] = ()
    hashers: dict[str, Callable[[Any], str]] = field(default_factory=dict)

    def input_digest(self, inputs: dict[str, Any]) -> str:
        """Digest of the inputs that take part in the key, custom hashers applied."""
        parts = {}
        for name, value in sorted(inputs.items()):
            if name in self.ignored_inputs:
                continue
            hasher = self.hashers.get(name)
            parts[name] = hasher(value) if hasher else stable_hash(value)
        return stable_hash(parts)


def cache_key(task_name: str, policy: CachePolicy, inputs: dict[str, Any], salt: str = DEFAULT_SALT) -> str:
    """The key under which a task's outputs are stored.

    Raises ValueError when the policy has no version: an unversioned cache would serve
    stale results after the code changes.
    """
    if not policy.version:
        raise ValueError(f"task {task_name!r}: caching needs a non-empty cache version")
    return stable_hash([salt, task_name, policy.version, policy.input_digest(inputs)])


class LocalCache:
    """An in-memory store of task outputs by cache key, for local runs."""

    def __init__(self) -> None:
        self._outputs: dict[str, Any] = {}
        self.hits = 0

    def get(self, key: str) -> Any | None:
        """The stored outputs for `key`, counting the hit, or None."""
        if key in self._outputs:
            self.hits += 1
            return self._outputs[key]
        return None

    def put(self, key: str, outputs: Any) -> None:
        self._outputs[key] = outputs

    def clear(self) -> None:
        """Forget everything (the local equivalent of clearing the cache)."""
        self._outputs.clear()
        self.hits = 0
