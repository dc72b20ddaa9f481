"""Peak and current memory of this process from /proc/self/status (Linux), for the benchmarks'
memory measurements: tracemalloc does not see torch's allocations and torch has no CPU allocator
statistics, so RSS is what there is."""

from __future__ import annotations

import re


def status_kib(field: str) -> int | None:
    """A field (VmRSS, VmHWM) of /proc/self/status in KiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
        return int(match.group(1)) if match else None
    except OSError:
        return None


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
