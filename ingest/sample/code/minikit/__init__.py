"""minikit: a miniature task toolkit used as FlyteGPT's sample code corpus."""

from minikit.cache import CachePolicy, cache_key
from minikit.task import Task, task

__all__ = ["CachePolicy", "Task", "cache_key", "task"]
