"""Configuration: environment variables, the database URL default, the master key."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shoudan.core.config import Settings, load_secret_key
from shoudan.core.db import normalize_url
from shoudan.core.errors import DomainError, ErrorCode

SHOUDAN = str(Path(sys.executable).parent / "shoudan")


def test_defaults_put_sqlite_under_the_data_dir(monkeypatch) -> None:
    for name in list(os.environ):
        if name.startswith("SHOUDAN_"):
            monkeypatch.delenv(name)
    settings = Settings()
    assert settings.resolved_database_url() == "sqlite:///var/shoudan.db"
    assert (settings.host, settings.port, settings.iso_port) == ("127.0.0.1", 8000, 8583)


def test_environment_overrides(monkeypatch) -> None:
    monkeypatch.setenv("SHOUDAN_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("SHOUDAN_PORT", "9000")
    settings = Settings()
    assert settings.resolved_database_url() == "postgresql://u@h/db"
    assert normalize_url(settings.resolved_database_url()) == "postgresql+psycopg://u@h/db"
    assert settings.port == 9000
    monkeypatch.setenv("SHOUDAN_PORT", "70000")
    with pytest.raises(ValueError):
        Settings()


def test_development_key_is_generated_once_with_a_warning(tmp_path: Path, caplog) -> None:
    settings = Settings(data_dir=tmp_path)
    first = load_secret_key(settings)
    assert len(first) == 32
    assert "generated a development secret key" in caplog.text
    key_file = tmp_path / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_secret_key(settings) == first  # read back, not regenerated


def test_key_from_environment_wins_and_is_checked(tmp_path: Path) -> None:
    key = "ab" * 32
    assert load_secret_key(Settings(data_dir=tmp_path, secret_key=key)) == bytes.fromhex(key)
    for bad in ("zz" * 32, "ab" * 16):
        with pytest.raises(DomainError) as raised:
            load_secret_key(Settings(data_dir=tmp_path, secret_key=bad))
        assert raised.value.code is ErrorCode.CONFIGURATION_ERROR
    assert not (tmp_path / "secret.key").exists()


def test_production_refuses_to_invent_a_key(tmp_path: Path) -> None:
    with pytest.raises(DomainError) as raised:
        load_secret_key(Settings(data_dir=tmp_path, environment="production"))
    assert raised.value.code is ErrorCode.CONFIGURATION_ERROR


def test_every_command_honours_the_database_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    env = {**os.environ, "SHOUDAN_DATABASE_URL": url, "SHOUDAN_DATA_DIR": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SHOUDAN, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )

    upgraded = run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert (tmp_path / "elsewhere.db").exists()
    for command in (["ledger", "verify"], ["audit", "verify"], ["worker", "--once"]):
        result = run(*command)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    exported = run("ledger", "export", "--format", "beancount", str(tmp_path / "out.beancount"))
    assert exported.returncode == 0, exported.stderr
    refused = run("ledger", "export", "--format", "csv", str(tmp_path / "x"))
    assert refused.returncode == 2
    assert "unknown format" in refused.stderr
