"""Giving freed memory back to the OS.

glibc keeps freed blocks inside the process: after a large transient buffer (an encode
call's activations, a cache shard being written, an old index version dropped by the bot)
RSS stays up, and with many such buffers of different sizes it creeps up with the corpus
(tests/bench/bench_memory.py). `trim_heap` returns whole free pages; it takes ~10 ms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


def trim_heap() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
