"""The embedded PostgreSQL the dev stack and the tests run on (store/embedded.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from runtime.config import Settings
from store.embedded import resolve_database_url, start_embedded_postgres, stop_embedded_postgres
from store.errors import StoreUnavailable
from store.repository import OperationStore
from tests.fixtures.pg import REPO_ROOT, TEST_DATA_DIR


@pytest.fixture
def scratch_data_dir() -> Iterator[Path]:
    """A data dir of its own, so stopping its server cannot disturb the session's shared one."""
    # Under var/ rather than /tmp: the server's system user must traverse every parent directory.
    data_dir = TEST_DATA_DIR.parent / f"test-embedded-{uuid.uuid4().hex[:8]}"
    try:
        yield data_dir
    finally:
        stop_embedded_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def test_starting_the_embedded_server_again_reuses_the_running_one() -> None:
    first = start_embedded_postgres(TEST_DATA_DIR)
    pid_before = (TEST_DATA_DIR / "pg" / "postmaster.pid").read_text()

    assert start_embedded_postgres(TEST_DATA_DIR) == first
    assert (TEST_DATA_DIR / "pg" / "postmaster.pid").read_text() == pid_before
    assert first.startswith("postgresql://postgres:@/opsflow?host=")


def test_the_database_url_setting_wins_over_the_embedded_server(tmp_path: Path) -> None:
    settings = Settings(database_url="postgresql://ops@db.internal:5432/opsflow", data_dir=tmp_path)

    assert resolve_database_url(settings) == "postgresql://ops@db.internal:5432/opsflow"
    assert not (tmp_path / "pg").exists()


def test_without_a_database_url_the_embedded_server_is_used() -> None:
    assert resolve_database_url(
        Settings(database_url=None, data_dir=TEST_DATA_DIR)
    ) == start_embedded_postgres(TEST_DATA_DIR)


def test_importing_and_starting_the_embedded_server_warns_about_nothing() -> None:
    environment = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    started = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            "import sys; from pathlib import Path; from store.embedded import start_embedded_postgres; "
            "start_embedded_postgres(Path(sys.argv[1]))",
            str(TEST_DATA_DIR),
        ],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert started.returncode == 0, started.stderr
    assert "Warning" not in started.stderr


async def test_a_stopped_server_is_unavailable_and_restarts_with_its_data(scratch_data_dir: Path) -> None:
    url = start_embedded_postgres(scratch_data_dir)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('before the stop')")
    finally:
        await conn.close()

    assert stop_embedded_postgres(scratch_data_dir) is True
    assert stop_embedded_postgres(scratch_data_dir) is False
    with pytest.raises(StoreUnavailable):
        await OperationStore.connect(url, timeout=2)

    assert start_embedded_postgres(scratch_data_dir) == url
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT note FROM kept") == "before the stop"
    finally:
        await conn.close()


def test_stopping_a_server_that_was_never_started_does_nothing(tmp_path: Path) -> None:
    assert stop_embedded_postgres(tmp_path) is False
