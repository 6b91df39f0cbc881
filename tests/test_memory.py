"""The peak-memory window that the demo, the benchmarks and each cohort row report."""

import sys

import numpy as np
import pytest

from histex._memory import current_rss_mb, peak_rss_mb, reset_peak_rss


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the window needs Linux's /proc")
def test_the_peak_is_the_windows_own():
    block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    del block
    reset_peak_rss()
    start = current_rss_mb()
    assert start <= peak_rss_mb() < start + 100  # the 300 MiB before the reset are not in the window
    block = np.ones(200 * 2**20 // 8)
    assert peak_rss_mb() > start + 150
    del block
