"""The process's memory high-water mark, for the log lines that close a stage or a cell: a run's
log then says which step raised the peak (the smol preset's memory target is checked this way)."""
from __future__ import annotations

import sys

try:
    import resource
except ImportError:  # Windows
    resource = None


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process so far, in MB (None where the platform has no getrusage)."""
    if resource is None:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024  # macOS reports bytes, Linux KiB


def peak_note() -> str:
    """', peak RSS 1234 MB' for a log line ('' where unknown)."""
    mb = peak_rss_mb()
    return "" if mb is None else f", peak RSS {mb:.0f} MB"
