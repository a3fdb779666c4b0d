"""The malloc settings of every command (allocator.py): they take on glibc, and a user's own win."""

import ctypes.util
import platform

import pytest

from diffusability.allocator import keep_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc only")
def test_settings_take_on_glibc(monkeypatch):
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    assert ctypes.util.find_library("c") and keep_freed_memory() is True


def test_a_users_malloc_environment_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
