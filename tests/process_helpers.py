"""Looking at real processes from a test (Linux /proc)."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """The process's children, zombies included."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped by whoever inherited it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
