"""Peak resident memory (RSS) of this process: the one helper behind every ``peak_rss_mb`` the project records.

* :func:`peak_rss_mb` — the process's high-water mark so far (``getrusage`` ``ru_maxrss``; KiB on Linux), e.g. in
  SFT / RL ``metrics.jsonl`` and the benchmarks;
* :class:`PeakRSS` — the peak inside one ``with`` block (the dense baselines' training log), falling back to
  :func:`peak_rss_mb` where the kernel's high-water mark cannot be reset.
"""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """The highest RSS this process has had so far, in MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status in MB (None where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak resident memory of this process inside a ``with`` block, in MB (``.peak_mb``, ``.start_mb``).

    Linux: the kernel's high-water mark (VmHWM) is reset on entry through /proc/self/clear_refs, so the peak is
    the block's own. Elsewhere (or if the reset is refused) it is the process-lifetime peak (``.scope`` says which).
    """

    def __enter__(self) -> "PeakRSS":
        self.start_mb, self.scope = rss_mb("VmRSS"), "block"
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5 = reset the peak RSS to the current RSS
        except OSError:
            self.scope = "process"
        return self

    def __exit__(self, *exc) -> None:
        peak = rss_mb("VmHWM")
        if peak is None or self.scope == "process":
            peak, self.scope = peak_rss_mb(), "process"
        self.peak_mb = round(peak, 1)
