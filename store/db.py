"""The connection pool and the versioned schema migrations (store/migrations/NNNN_name.sql)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol, Self
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog
from pydantic import BaseModel

from store.errors import StoreUnavailable, translated_errors

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

# pg_advisory_xact_lock key every process takes before migrating: the bytes of "opsflow".
# Any constant works as long as nothing else in the database uses it.
MIGRATION_LOCK_KEY = int.from_bytes(b"opsflow", "big")

_log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; a stray or duplicate file is an error, not skipped."""
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_lowercase_name.sql")
        version = int(match["version"])
        if version in migrations:
            raise ValueError(
                f"two migration files have version {version}: {migrations[version].name}, {path.name}"
            )
        migrations[version] = Migration(
            version=version, name=match["name"], sql=path.read_text(encoding="utf-8")
        )
    return [migrations[v] for v in sorted(migrations)]


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_json(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Maps json and jsonb to Python values both ways, so a dict is passed and read back as a dict."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=encode_json, decoder=json.loads, schema="pg_catalog")


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    **kwargs: Any,
) -> asyncpg.Pool:
    """A pool whose connections have the JSON codecs; other keywords go to ``asyncpg.create_pool``.

    Raises ``StoreUnavailable`` when the server cannot be reached.
    """

    async def init_with_codecs(conn: asyncpg.Connection) -> None:
        await init_connection(conn)
        if init is not None:
            await init(conn)

    kwargs.setdefault("reset", keep_session)
    with translated_errors("connecting to the database"):
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=init_with_codecs, **kwargs
        )
    return pool


async def keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset when a connection goes back: nothing beyond the rollback of an open transaction,
    which asyncpg always does. The default also sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL``, a round trip per store call, undoing session state the store never leaves: its advisory
    locks are transaction-scoped, and it runs no LISTEN, SET or cursor outside a transaction."""


@asynccontextmanager
async def pooled_connection(
    pool: asyncpg.Pool, doing: str, *, acquire_timeout: float
) -> AsyncIterator[asyncpg.Connection]:
    """A connection from ``pool`` with the driver's errors translated to the store's (store.errors).

    Raises ``StoreUnavailable`` when no connection frees up within ``acquire_timeout`` seconds.
    """
    # A closed pool means this worker is shutting down: another worker's retry can still succeed.
    if pool.is_closing():
        raise StoreUnavailable(f"the store is closed; not {doing}")
    with translated_errors(doing):
        async with pool.acquire(timeout=acquire_timeout) as conn:
            yield conn


def url_with_database(url: str, database: str) -> str:
    """The same server and credentials, another database (the tests' one-database-per-test)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


_CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(
    target: asyncpg.Pool | asyncpg.Connection, migrations: Sequence[Migration] | None = None
) -> list[int]:
    """Applies the migrations not yet recorded in ``schema_migrations``, in version order, one
    transaction each; returns the versions this call applied.

    Each transaction first takes a transaction-scoped advisory lock, so processes starting together
    queue up: the first applies a version, the others then see it recorded and skip it. A failing
    migration rolls back whole and raises; the versions before it stay applied.
    """
    pending = load_migrations() if migrations is None else sorted(migrations, key=lambda m: m.version)
    if isinstance(target, asyncpg.Pool):
        async with target.acquire() as conn:
            return await _migrate(conn, pending)
    return await _migrate(target, pending)


async def _migrate(conn: asyncpg.Connection, migrations: Sequence[Migration]) -> list[int]:
    applied: list[int] = []
    with translated_errors("migrating the schema"):
        for migration in migrations:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
                # Under the lock too: two sessions racing on CREATE TABLE IF NOT EXISTS can both try.
                await conn.execute(_CREATE_SCHEMA_MIGRATIONS)
                done = await conn.fetchval(
                    "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version
                )
                if done:
                    continue
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration.version)
            _log.info("migration applied", version=migration.version, name=migration.name)
    return applied


class _HasPool(Protocol):
    @property
    def pool(self) -> asyncpg.Pool: ...


class PoolStore:
    """Base of the stores that live on the ``OperationStore``'s pool (maintenance windows, disks,
    intake): each query takes a pooled connection with the driver's errors translated."""

    def __init__(self, pool: asyncpg.Pool, *, acquire_timeout: float = 10.0) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout

    @classmethod
    def of(cls, store: _HasPool, *, acquire_timeout: float = 10.0) -> Self:
        """This store on ``store``'s pool, as ``OperationStore.lifecycle`` is built."""
        return cls(store.pool, acquire_timeout=acquire_timeout)

    @asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[asyncpg.Connection]:
        async with pooled_connection(self._pool, doing, acquire_timeout=self._acquire_timeout) as conn:
            yield conn
