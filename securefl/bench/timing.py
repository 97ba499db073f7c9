"""What every bench section records next to its numbers: the machine and its load."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine(**versions: str) -> dict[str, Any]:
    """Platform, core count, Python, the given library ``versions`` and the load
    average now (other processes distort wall time, so every section notes it)."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **versions,
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }
