"""Reading a statement file: one streaming pass for its digest, encoding (UTF-8 or GBK,
detected) and line count; a GBK file transcoded to a UTF-8 copy (streaming) for DuckDB; one
line's values. Memory stays bounded by the chunk size."""

from __future__ import annotations

import codecs
import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shoudan.reconciliation.domain import StatementError

CHUNK: Final = 1 << 20
UTF8: Final = "utf-8-sig"  # a BOM, when present, is dropped
GBK: Final = "gb18030"  # the superset of GBK: every GBK file decodes the same


@dataclass(frozen=True, slots=True)
class Scan:
    sha256: str
    encoding: str
    lines: int


@dataclass(frozen=True, slots=True)
class _Failure:
    line: int
    column: int
    byte: int


def scan(path: Path, name: str) -> Scan:
    """Digest, encoding and line count. UTF-8 is tried first (a GBK file is almost never valid
    UTF-8), then GBK; NUL bytes and text valid in neither are refused with their place."""
    digest, lines, utf8_failure = _pass(path, name, UTF8)
    if utf8_failure is None:
        return Scan(digest, "utf-8", lines)
    _, gbk_lines, gbk_failure = _pass(path, name, GBK)
    if gbk_failure is None:
        return Scan(digest, "gbk", gbk_lines)
    raise StatementError(
        name, gbk_failure.line,
        f"byte 0x{gbk_failure.byte:02x} is neither UTF-8 nor GBK (UTF-8 failed at line "
        f"{utf8_failure.line}, column {utf8_failure.column})",
        gbk_failure.column,
    )  # fmt: skip


def _pass(path: Path, name: str, encoding: str) -> tuple[str, int, _Failure | None]:
    decoder = codecs.getincrementaldecoder(encoding)()
    digest = hashlib.sha256()
    newlines, offset, line_start = 0, 0, 0
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            nul = chunk.find(b"\x00")
            if nul >= 0:
                line, column = _place(path, offset + nul)
                raise StatementError(name, line, "a NUL byte: this is not a text statement", column)
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line, column = _place(path, offset + exc.start)
                return digest.hexdigest(), 0, _Failure(line, column, chunk[exc.start])
            newlines += chunk.count(b"\n")
            last = chunk.rfind(b"\n")
            if last >= 0:
                line_start = offset + last + 1
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            line, column = _place(path, offset - 1)
            return digest.hexdigest(), 0, _Failure(line, column, 0)
    return digest.hexdigest(), newlines + (offset > line_start), None


def _place(path: Path, position: int) -> tuple[int, int]:
    """1-based line and byte column of ``position``."""
    with path.open("rb") as stream:
        before = stream.read(position)
    return before.count(b"\n") + 1, position - (before.rfind(b"\n") + 1) + 1


def utf8_copy(path: Path, encoding: str, scratch: Path) -> Path:
    """``path`` itself when it is UTF-8; else a UTF-8 copy in ``scratch``, written streaming."""
    if encoding == "utf-8":
        return path
    copy = scratch / "statement-utf8.csv"
    with (
        path.open(encoding=GBK, newline="") as text,
        copy.open("w", encoding="utf-8", newline="") as out,
    ):
        while chunk := text.read(CHUNK):
            out.write(chunk)
    return copy


# One line's values, comma-separated, each plain or in double quotes ("" for a quote): a
# quoted value may not span lines, since lines are numbered as the file has them.
CSV_VALUE: Final = r'("(?:[^"]|"")*"|[^,"]*),'  # a value and its comma (one is added)
CSV_LINE: Final = f"(?:{CSV_VALUE})*"
_CSV_LINE: Final = re.compile(CSV_LINE)


class NotCsv(ValueError):
    pass


def parse_line(text: str) -> list[str]:
    """The values of one line (``""`` → ``[]``, like the csv module)."""
    if '"' in text and not _CSV_LINE.fullmatch(text + ","):
        raise NotCsv("a quote inside an unquoted value, or a quoted value left open")
    return next(csv.reader([text]), [])
