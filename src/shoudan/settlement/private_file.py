"""Files that hold clear account numbers (bank batch and confirmation files): created owner-only
(0600, whatever the umask), and written whole or not at all — a failed write leaves no partial
file behind, and writing again replaces the file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from shoudan.core.ids import new_id

MODE = 0o600


def write_private(path: Path, write: Callable[[TextIO], object]) -> None:
    """Create ``path`` with mode 0600 through ``write`` (UTF-8 text, no newline translation)."""
    temporary = path.with_name(f".{path.name}.{new_id('tmp_')}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE)
    try:
        os.fchmod(fd, MODE)  # os.open's mode is reduced by the umask, never widened: make sure
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
