"""eval.memory: the one peak-RSS helper (SFT/RL metrics.jsonl, dense baselines' training log, benchmarks)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from eval.memory import PeakRSS, peak_rss_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="block-scoped peak needs /proc/self/clear_refs")
def test_block_peak_sees_an_allocation_inside_the_block():
    with PeakRSS() as mem:
        block = np.ones(64 * 2**20 // 8)  # 64 MB, touched
        del block
    assert mem.scope in ("block", "process")
    if mem.scope == "block":
        assert mem.peak_mb - mem.start_mb >= 60  # the freed 64 MB still count: it is a high-water mark
    assert peak_rss_mb() >= mem.peak_mb - 1  # the process peak is never below a block's peak


def test_every_caller_uses_the_same_helper():
    import eval.dense.recommenders as dense
    import sft.callbacks as callbacks

    assert callbacks.peak_rss_mb is peak_rss_mb and dense.PeakRSS is PeakRSS
