"""Temporal clients as every process builds them: the pydantic data converter, always."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig


def runtime_with_prometheus(bind_address: str) -> Runtime:
    """A runtime that serves the SDK's own metrics on ``bind_address`` (``host:port``)."""
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=bind_address)))


async def connect(address: str, namespace: str = "default", *, runtime: Runtime | None = None) -> Client:
    return await Client.connect(
        address, namespace=namespace, data_converter=pydantic_data_converter, runtime=runtime
    )
