"""Tasks: plain functions with a name, resources, retries and an optional cache."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from minikit.cache import CachePolicy, LocalCache, cache_key

_LOCAL_CACHE = LocalCache()


@dataclass(frozen=True)
class Resources:
    """CPU and memory for a task. Memory needs a unit ("2Gi"): a bare number means bytes."""

    cpu: str = "1"
    mem: str = "1Gi"

    def __post_init__(self) -> None:
        if self.mem.isdigit():
            raise ValueError(f"memory {self.mem!r} has no unit; write e.g. '{self.mem}Mi'")


class Task:
    """A function run as a unit of work, retried on failure and optionally cached."""

    def __init__(self, fn: Callable[..., Any], *, retries: int = 0, resources: Resources | None = None,
                 cache: CachePolicy | None = None) -> None:
        self.fn = fn
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self.retries = retries
        self.resources = resources or Resources()
        self.cache = cache
        functools.update_wrapper(self, fn)

    def __call__(self, **inputs: Any) -> Any:
        if self.cache is None:
            return self._run(inputs)
        key = cache_key(self.name, self.cache, inputs)
        hit = _LOCAL_CACHE.get(key)
        if hit is not None:
            return hit
        outputs = self._run(inputs)
        _LOCAL_CACHE.put(key, outputs)
        return outputs

    def _run(self, inputs: dict[str, Any]) -> Any:
        """Call the function, retrying up to `retries` more times."""
        for attempt in range(self.retries + 1):
            try:
                return self.fn(**inputs)
            except Exception:
                if attempt == self.retries:
                    raise
        raise AssertionError("unreachable")


def task(fn: Callable[..., Any] | None = None, *, retries: int = 0, cache: bool = False,
         cache_version: str = "", resources: Resources | None = None) -> Any:
    """Decorator that turns a function into a Task.

    `cache=True` needs `cache_version`; inputs are passed by keyword, as in a workflow.
    """

    def wrap(f: Callable[..., Any]) -> Task:
        policy = CachePolicy(version=cache_version) if cache else None
        if policy is not None and not cache_version:
            raise ValueError(f"{f.__name__}: cache=True needs a cache_version")
        return Task(f, retries=retries, resources=resources, cache=policy)

    return wrap(fn) if fn is not None else wrap


def map_over(t: Task, values: list[Any], input_name: str, **fixed: Any) -> list[Any]:
    """Run `t` once per value (sequentially here), like a map task with fixed inputs."""
    return [t(**{input_name: v}, **fixed) for v in values]
