"""Benchmarks that measure memory run each side in a child process: its own peak RSS."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: reset by exec, unlike ru_maxrss, which keeps
    the parent's high-water mark across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def measure(module: str, args: list[str]) -> tuple[dict[str, Any], float]:
    """Run ``python -m module *args`` (it prints one JSON object with ``peak_rss_mib``),
    return its answer and its peak RSS in MiB."""
    completed = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, check=True
    )
    answer: dict[str, Any] = json.loads(completed.stdout)
    return answer, float(answer.pop("peak_rss_mib"))
