"""``shoudan terminals …``: the device inventory — import a CSV file, print label files.

    shoudan terminals import devices.csv --labels labels.csv
    shoudan terminals labels --import-id imp_… --out labels.csv

The import is all or nothing: a file with any bad row imports nothing, and every error is
listed (``row N, field: message``; the header is row 1). Exit status 2 then.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import typer

from shoudan.cli.common import DATABASE_URL_OPTION, fail, settings
from shoudan.container import Container, build_container
from shoudan.core.errors import DomainError
from shoudan.terminals import stock
from shoudan.terminals.domain import DeviceStatus
from shoudan.terminals.inventory import Label, labels_csv

app = typer.Typer(no_args_is_help=True)

ACTOR_OPTION = typer.Option(
    None, "--actor", help="Who acts (for the audit log) [default: cli:<OS user>]."
)


@contextmanager
def _container(database_url: str | None) -> Iterator[Container]:
    container = build_container(settings(database_url))
    try:
        yield container
    finally:
        container.dispose()


class _Bar:
    """A progress bar opened on the first report, when the number of devices is known."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = typer.progressbar(length=total, label="importing").__enter__()
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


def _write_labels(labels: list[Label], out: Path) -> None:
    text = labels_csv(labels)
    if str(out) == "-":
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")


def _report_rows(error: DomainError) -> None:
    for item in error.details.get("errors", []):
        typer.echo(f"row {item['row']}, {item['field']}: {item['message']}", err=True)
    hidden = error.details.get("error_count", 0) - len(error.details.get("errors", []))
    if hidden > 0:
        typer.echo(f"… and {hidden} more", err=True)


@app.command("import")
def import_devices(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The inventory CSV."),
    labels: Path | None = typer.Option(
        None, "--labels", help="Also write the label file here ('-': standard output)."
    ),
    actor: str | None = ACTOR_OPTION,
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Add the devices of a CSV file (header: serial_number, product[, model][, batch]) to
    the inventory, each with its anti-counterfeit code: all of them, or none."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        fail("the CSV file must be UTF-8", exit_code=2)
    bar = _Bar()
    with _container(database_url) as container:
        try:
            with container.database.transaction() as session:
                result = stock.import_devices(
                    session, container.vault, text, actor=actor or f"cli:{getpass.getuser()}",
                    clock=container.clock, progress=bar,
                )  # fmt: skip
        except DomainError as error:
            with suppress(Exception):
                bar.close()
            _report_rows(error)
            fail(error, exit_code=2)
        bar.close()
    if labels is not None:
        _write_labels(result.labels, labels)
    typer.echo(f"imported {len(result.labels)} devices (import {result.import_id})", err=True)
    if labels is None:
        typer.echo(
            f"print their labels: shoudan terminals labels --import-id {result.import_id} "
            "--out labels.csv",
            err=True,
        )


@app.command("labels")
def labels(
    out: Path = typer.Option(..., "--out", help="The label file to write ('-': standard output)."),
    import_id: str | None = typer.Option(None, "--import-id", help="Only this import's."),
    serial: list[str] = typer.Option([], "--serial", help="Only these serial numbers."),
    status: DeviceStatus | None = typer.Option(None, "--status", help="Only these, e.g. in_stock."),
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Write the label file (serial_number, product, model, verification_code) of the devices
    selected; the codes are derived again with the vault key (see docs/terminals.md)."""
    with _container(database_url) as container, container.database.read() as session:
        found = stock.labels_for(
            session, container.vault, import_id=import_id, serial_numbers=serial, status=status
        )
    if not found:
        fail("no device matches", exit_code=2)
    _write_labels(found, out)
    typer.echo(f"{len(found)} labels written", err=True)
