"""The peak-memory window that the demo, the benchmarks and each cohort row report."""

import subprocess
import sys
import textwrap

import pytest

# Run in a fresh process: in a long test session the allocator may serve a new block from memory that earlier tests
# freed but that is still resident, and then the resident set does not grow when the block is touched.
WINDOW = textwrap.dedent(
    """
    import numpy as np
    from histex._memory import current_rss_mb, peak_rss_mb, reset_peak_rss

    block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    del block
    reset_peak_rss()
    start = current_rss_mb()
    assert start <= peak_rss_mb() < start + 100, (start, peak_rss_mb())  # the 300 MiB before are not in the window
    block = np.ones(200 * 2**20 // 8)
    assert peak_rss_mb() > start + 150, (start, peak_rss_mb())
    del block
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the window needs Linux's /proc")
def test_the_peak_is_the_windows_own():
    run = subprocess.run([sys.executable, "-c", WINDOW], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
