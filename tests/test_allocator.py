"""The allocator tuning applies on glibc and is harmless to call again."""

from __future__ import annotations

import platform
import sys

import pytest
from mergehub.run import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_sets_glibc_thresholds_once():
    assert allocator.tune() is True
    assert allocator.tune() is True  # cached: mallopt is not called twice
