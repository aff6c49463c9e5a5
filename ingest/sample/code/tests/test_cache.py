"""Tests of the sample package: the code loader must leave this file out."""

from minikit.cache import CachePolicy, cache_key


def test_key_changes_with_version():
    assert cache_key("t", CachePolicy("1"), {}) != cache_key("t", CachePolicy("2"), {})
