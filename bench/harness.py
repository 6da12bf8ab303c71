"""What every benchmark stands on: a dev server of its own (our search attributes registered) and a fresh
database on ``DATABASE_URL`` or the embedded server under var/bench."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from deploy.processes import find_binary
from runtime import search_attributes
from store.db import url_with_database
from store.embedded import start_embedded_postgres
from store.repository import OperationStore

BENCH_DATA_DIR = Path("var/bench")


async def dev_server() -> WorkflowEnvironment:
    return await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=find_binary("temporal"),
        search_attributes=list(search_attributes.ALL),
        dev_server_log_level="error",
    )


async def fresh_database_url(prefix: str = "bench") -> str:
    """A new, empty database (migrated on first connect) for one run."""
    server = os.environ.get("DATABASE_URL") or start_embedded_postgres(BENCH_DATA_DIR)
    admin = await OperationStore.connect(server)
    database = f"{prefix}_{uuid.uuid4().hex}"
    try:
        await admin.pool.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    return url_with_database(server, database)
