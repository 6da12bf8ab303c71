"""Configuration from the environment, read once at process start."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from temporalio.service import TLSConfig

DEFAULT_TASK_QUEUE = "ecs-ops"


class ConfigError(ValueError):
    """Configuration that cannot work; the message names the variables and what is wrong."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# Names as the temporal CLI's environment configuration spells them.
TLS_ENV = "TEMPORAL_TLS"
TLS_CERT_ENV = "TEMPORAL_TLS_CLIENT_CERT_PATH"
TLS_KEY_ENV = "TEMPORAL_TLS_CLIENT_KEY_PATH"
TLS_CA_ENV = "TEMPORAL_TLS_SERVER_CA_CERT_PATH"
TLS_SERVER_NAME_ENV = "TEMPORAL_TLS_SERVER_NAME"
API_KEY_ENV = "TEMPORAL_API_KEY"


class TemporalConnection(BaseModel):
    """Where and how to reach Temporal: a dev server in plaintext, a cluster with mTLS, or a hosted namespace
    with an API key (over TLS). ``check`` refuses the combinations that cannot work."""

    model_config = ConfigDict(frozen=True)

    address: str = "localhost:7233"
    namespace: str = "default"
    tls: bool = False
    client_cert_path: Path | None = None
    client_key_path: Path | None = None
    server_ca_cert_path: Path | None = None
    server_name: str | None = None
    api_key: SecretStr | None = None

    @classmethod
    def from_env(cls) -> TemporalConnection:
        def path(name: str) -> Path | None:
            raw = os.environ.get(name, "").strip()
            return Path(raw) if raw else None

        raw_tls = os.environ.get(TLS_ENV, "").strip().lower()
        if raw_tls and raw_tls not in _TRUE | _FALSE:
            raise ConfigError(f"{TLS_ENV}={raw_tls!r} is not true or false")
        cert, key, ca = path(TLS_CERT_ENV), path(TLS_KEY_ENV), path(TLS_CA_ENV)
        server_name = os.environ.get(TLS_SERVER_NAME_ENV, "").strip() or None
        api_key = os.environ.get(API_KEY_ENV, "").strip() or None
        given = {
            TLS_CERT_ENV: cert,
            TLS_KEY_ENV: key,
            TLS_CA_ENV: ca,
            TLS_SERVER_NAME_ENV: server_name,
            API_KEY_ENV: api_key,
        }
        if raw_tls in _FALSE:
            needing_tls = [name for name, value in given.items() if value is not None]
            if needing_tls:
                raise ConfigError(
                    f"{TLS_ENV}={raw_tls} but {', '.join(needing_tls)} set: these need TLS "
                    "(an API key or client certificate over plaintext would be exposed); "
                    f"unset them or set {TLS_ENV}=true"
                )
        tls = raw_tls in _TRUE or (not raw_tls and any(value is not None for value in given.values()))
        connection = cls(
            address=_env("TEMPORAL_ADDRESS", "localhost:7233"),
            namespace=_env("TEMPORAL_NAMESPACE", "default"),
            tls=tls,
            client_cert_path=cert,
            client_key_path=key,
            server_ca_cert_path=ca,
            server_name=server_name,
            api_key=SecretStr(api_key) if api_key else None,
        )
        connection.check()
        return connection

    def check(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"TEMPORAL_ADDRESS={self.address!r} is not host:port")
        if (self.client_cert_path is None) != (self.client_key_path is None):
            have, lack = (
                (TLS_CERT_ENV, TLS_KEY_ENV) if self.client_key_path is None else (TLS_KEY_ENV, TLS_CERT_ENV)
            )
            raise ConfigError(
                f"{have} is set but {lack} is not: mutual TLS needs both the certificate and its key"
            )
        if self.api_key is not None and self.client_cert_path is not None:
            raise ConfigError(
                f"both {API_KEY_ENV} and {TLS_CERT_ENV} are set: authenticate with one, an API key or a client "
                "certificate"
            )
        for name, path in (
            (TLS_CERT_ENV, self.client_cert_path),
            (TLS_KEY_ENV, self.client_key_path),
            (TLS_CA_ENV, self.server_ca_cert_path),
        ):
            if path is None:
                continue
            try:
                head = path.read_bytes()[:4096]
            except OSError as error:
                raise ConfigError(f"{name}={path}: cannot read it ({error.strerror})") from None
            if b"-----BEGIN " not in head:
                raise ConfigError(f"{name}={path} is not a PEM file")

    def tls_config(self) -> TLSConfig | bool:
        if not self.tls:
            return False
        if self.client_cert_path is None and self.server_ca_cert_path is None and self.server_name is None:
            return True  # the system's roots, the address's name
        return TLSConfig(
            client_cert=self.client_cert_path.read_bytes() if self.client_cert_path else None,
            client_private_key=self.client_key_path.read_bytes() if self.client_key_path else None,
            server_root_ca_cert=self.server_ca_cert_path.read_bytes() if self.server_ca_cert_path else None,
            domain=self.server_name,
        )

    def describe(self) -> str:
        """For the start-up log line: how we connect, never the secret."""
        how = "plaintext"
        if self.tls:
            how = "mTLS" if self.client_cert_path else "TLS"
        if self.api_key is not None:
            how += " + API key"
        return how


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


class Settings(BaseModel):
    temporal: TemporalConnection = TemporalConnection()
    task_queue: str = DEFAULT_TASK_QUEUE
    database_url: str | None = None
    data_dir: Path = Path("var")
    houyi_url: str = "http://127.0.0.1:8090"
    houyi_timeout_seconds: float = 10.0
    # A worker that cannot reach Temporal at start exits (1) after this, so its supervisor restarts it.
    temporal_connect_timeout_seconds: float = Field(default=30.0, gt=0)
    worker_metrics_port: int = Field(default=9464, ge=0, le=65535)
    max_concurrent_activities: int = Field(default=100, ge=1)
    max_concurrent_workflow_tasks: int = Field(default=100, ge=1)
    log_level: str = "INFO"
    power_poll_seconds: float = Field(default=60.0, gt=0)
    migration_poll_seconds: float = Field(default=5.0, gt=0)
    time_scale: float = Field(default=1.0, gt=0, le=1.0)
    disk_poll_seconds: float = Field(default=5.0, gt=0)
    disk_slot_retry_seconds: float = Field(default=30.0, gt=0)
    # Cron of the disk recycle Schedule, in UTC; "off": the worker leaves the Schedule alone.
    recycle_schedule: str = "0 3 * * *"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in _LOG_LEVELS:
            raise ValueError(f"not one of {', '.join(_LOG_LEVELS)}")
        return value.upper()

    @field_validator("houyi_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("not an http:// or https:// URL")
        return value

    @classmethod
    def from_env(cls) -> Settings:
        """Raises ``ConfigError`` naming the variable when the environment cannot work."""
        try:
            return cls._from_env()
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
                for problem in error.errors()
            )
            raise ConfigError(problems) from None
        except ValueError as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(str(error)) from None

    @property
    def temporal_address(self) -> str:
        return self.temporal.address

    @property
    def temporal_namespace(self) -> str:
        return self.temporal.namespace

    @classmethod
    def _from_env(cls) -> Settings:
        given = {
            field: os.environ[name].strip()
            for field, name in ENV_NAMES.items()
            if os.environ.get(name, "").strip()
        }
        try:
            # pydantic converts the strings ("9464" to 9464) and names the field that does not fit.
            return cls(temporal=TemporalConnection.from_env(), **given)
        except ValidationError as error:
            problems = []
            for problem in error.errors():
                field = str(problem["loc"][0]) if problem["loc"] else ""
                raw = given.get(field, "")
                problems.append(f"{ENV_NAMES.get(field, field)}={raw!r}: {problem['msg']}")
            raise ConfigError("; ".join(problems)) from None


# Settings field -> the environment variable that sets it.
ENV_NAMES = {
    "task_queue": "OPSFLOW_TASK_QUEUE",
    "database_url": "DATABASE_URL",
    "data_dir": "OPSFLOW_DATA_DIR",
    "houyi_url": "HOUYI_URL",
    "houyi_timeout_seconds": "HOUYI_TIMEOUT_SECONDS",
    "temporal_connect_timeout_seconds": "TEMPORAL_CONNECT_TIMEOUT_SECONDS",
    "worker_metrics_port": "WORKER_METRICS_PORT",
    "max_concurrent_activities": "WORKER_MAX_CONCURRENT_ACTIVITIES",
    "max_concurrent_workflow_tasks": "WORKER_MAX_CONCURRENT_WORKFLOW_TASKS",
    "log_level": "OPSFLOW_LOG_LEVEL",
    "power_poll_seconds": "OPSFLOW_POWER_POLL_SECONDS",
    "migration_poll_seconds": "OPSFLOW_MIGRATION_POLL_SECONDS",
    # Against the simulator at speed N, 1/N: the real waits that model Houyi's shrink with it.
    "time_scale": "OPSFLOW_TIME_SCALE",
    "disk_poll_seconds": "OPSFLOW_DISK_POLL_SECONDS",
    "disk_slot_retry_seconds": "OPSFLOW_DISK_SLOT_RETRY_SECONDS",
    # Cron of the disk recycle Schedule, in UTC; "off": the worker leaves the Schedule alone.
    "recycle_schedule": "OPSFLOW_RECYCLE_SCHEDULE",
}
