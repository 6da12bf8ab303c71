"""Temporal clients as every process builds them: the pydantic data converter, always; TLS and the API key
as the environment configures them (runtime/config.py ``TemporalConnection``)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from runtime.config import TemporalConnection


def runtime_with_prometheus(bind_address: str) -> Runtime:
    """A runtime that serves the SDK's own metrics on ``bind_address`` (``host:port``).

    Durations stay in the SDK's default milliseconds: deploy/prometheus/alerts.yml and the dashboard read
    ``temporal_*_latency`` in ms."""
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=bind_address)))


async def connect(
    target: str | TemporalConnection, namespace: str = "default", *, runtime: Runtime | None = None
) -> Client:
    connection = (
        target
        if isinstance(target, TemporalConnection)
        else TemporalConnection(address=target, namespace=namespace)
    )
    return await Client.connect(
        connection.address,
        namespace=connection.namespace,
        data_converter=pydantic_data_converter,
        runtime=runtime,
        tls=connection.tls_config(),
        api_key=connection.api_key.get_secret_value() if connection.api_key is not None else None,
    )
