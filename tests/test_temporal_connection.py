"""How the worker reaches a real Temporal cluster: address, namespace, TLS, mTLS or an API key, all from the
environment. An inconsistent configuration is refused at start with the variable named (exit 2); a worker
with client certificates runs operations through a mutual-TLS endpoint; no secret reaches its output."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from deploy import processes
from domain.operations import OperationResult
from runtime.config import ConfigError, Settings
from store.repository import OperationStore
from store.seed import seed_dev_approvers
from tests.fixtures.tls import SERVER_NAME, Pki, make_pki, tls_front
from tests.helpers import SimulatorAdmin

REPO = Path(__file__).resolve().parents[1]
API_KEY = "tk-live-4f1c9d2e7b6a5f3e9d8c7b6a"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def settings_from(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in list(os.environ):
        if name.startswith(("TEMPORAL_", "OPSFLOW_", "WORKER_")) or name in ("DATABASE_URL", "HOUYI_URL"):
            monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


def test_inconsistent_configurations_are_refused_naming_the_variables(
    monkeypatch: pytest.MonkeyPatch, pki: Pki, tmp_path: Path
) -> None:
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello")
    cases: list[tuple[dict[str, str], str]] = [
        ({"TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client_cert)}, "TEMPORAL_TLS_CLIENT_CERT_PATH is set but "
         "TEMPORAL_TLS_CLIENT_KEY_PATH is not"),
        ({"TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.client_key)}, "TEMPORAL_TLS_CLIENT_KEY_PATH is set but "
         "TEMPORAL_TLS_CLIENT_CERT_PATH is not"),
        ({"TEMPORAL_TLS": "false", "TEMPORAL_API_KEY": API_KEY}, "TEMPORAL_TLS=false but TEMPORAL_API_KEY set"),
        ({"TEMPORAL_TLS": "maybe"}, "TEMPORAL_TLS='maybe' is not true or false"),
        ({"TEMPORAL_ADDRESS": "temporal.internal"}, "TEMPORAL_ADDRESS='temporal.internal' is not host:port"),
        ({"TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(tmp_path / "missing.pem")},
         "TEMPORAL_TLS_SERVER_CA_CERT_PATH=" + str(tmp_path / "missing.pem") + ": cannot read it"),
        ({"TEMPORAL_TLS_CLIENT_CERT_PATH": str(not_pem), "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.client_key)},
         f"TEMPORAL_TLS_CLIENT_CERT_PATH={not_pem} is not a PEM file"),
        ({"TEMPORAL_API_KEY": API_KEY, "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client_cert),
          "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.client_key)}, "both TEMPORAL_API_KEY and "
         "TEMPORAL_TLS_CLIENT_CERT_PATH are set"),
        ({"WORKER_METRICS_PORT": "99999"}, "WORKER_METRICS_PORT='99999': Input should be less than or equal to 65535"),
        ({"HOUYI_URL": "houyi:8090"}, "HOUYI_URL='houyi:8090': Value error, not an http:// or https:// URL"),
        ({"OPSFLOW_LOG_LEVEL": "loud"}, "OPSFLOW_LOG_LEVEL='loud'"),
        ({"HOUYI_TIMEOUT_SECONDS": "ten"}, "HOUYI_TIMEOUT_SECONDS='ten': Input should be a valid number"),
    ]  # fmt: skip
    for env, message in cases:
        with pytest.raises(ConfigError) as refused:
            settings_from(monkeypatch, **env)
        assert message in str(refused.value), (env, str(refused.value))
        assert API_KEY not in str(refused.value)


def test_consistent_configurations_build_the_connection_they_name(
    monkeypatch: pytest.MonkeyPatch, pki: Pki
) -> None:
    plain = settings_from(monkeypatch, TEMPORAL_ADDRESS="temporal.internal:7233", TEMPORAL_NAMESPACE="ops-cn")
    assert (plain.temporal_address, plain.temporal_namespace, plain.temporal.tls_config()) == (
        "temporal.internal:7233",
        "ops-cn",
        False,
    )
    assert plain.temporal.describe() == "plaintext"

    mtls = settings_from(
        monkeypatch,
        TEMPORAL_TLS_CLIENT_CERT_PATH=str(pki.client_cert),
        TEMPORAL_TLS_CLIENT_KEY_PATH=str(pki.client_key),
        TEMPORAL_TLS_SERVER_CA_CERT_PATH=str(pki.ca),
        TEMPORAL_TLS_SERVER_NAME=SERVER_NAME,
    )
    tls = mtls.temporal.tls_config()
    assert isinstance(tls, TLSConfig) and tls.domain == SERVER_NAME
    assert tls.client_cert == pki.client_cert.read_bytes() and tls.server_root_ca_cert == pki.ca.read_bytes()
    assert mtls.temporal.describe() == "mTLS"

    hosted = settings_from(monkeypatch, TEMPORAL_API_KEY=API_KEY, TEMPORAL_NAMESPACE="ops.a1b2c")
    assert hosted.temporal.tls_config() is True and hosted.temporal.describe() == "TLS + API key"
    assert API_KEY not in repr(hosted) and API_KEY not in hosted.model_dump_json()


def test_the_worker_process_refuses_a_bad_configuration_with_exit_2_and_no_traceback(pki: Pki) -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO / "worker.py")],
        env={
            "PATH": "/usr/bin:/bin",
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client_cert),
            "TEMPORAL_API_KEY": API_KEY,
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip() == (
        "opsflow-worker: configuration error: TEMPORAL_TLS_CLIENT_CERT_PATH is set but "
        "TEMPORAL_TLS_CLIENT_KEY_PATH is not: mutual TLS needs both the certificate and its key"
    )
    assert "Traceback" not in completed.stderr and API_KEY not in completed.stdout + completed.stderr


DB_PASSWORD = "pw-7Hq2-not-for-logs"


def with_password(url: str) -> tuple[str, str]:
    """The URL with a password (the local servers trust their clients, so any works), and that password."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{DB_PASSWORD}@{host}")), DB_PASSWORD


@pytest.fixture
async def seeded_database(database_url: str) -> str:
    url, _ = with_password(database_url)
    seeding = await OperationStore.connect(url)
    await seed_dev_approvers(seeding)
    await seeding.close()
    return url


def lock_input(nc_ip: str) -> dict[str, Any]:
    return {
        "nc_ip": nc_ip,
        "requester": "alice",
        "reason_category": "hardware",
        "reason": "mTLS check",
        "settings": {"alertRuleName": "hardware_exception_alarm", "preLock": 0},
    }


@pytest.fixture
async def direct_client(dev_server_env: WorkflowEnvironment) -> AsyncIterator[Client]:
    address = dev_server_env.client.service_client.config.target_host
    yield await Client.connect(address, data_converter=pydantic_data_converter)


async def test_a_worker_with_client_certificates_runs_operations_through_a_mutual_tls_endpoint(
    pki: Pki,
    dev_server_env: WorkflowEnvironment,
    direct_client: Client,
    simulator: Any,
    admin: SimulatorAdmin,
    seeded_database: str,
    tmp_path: Path,
) -> None:
    backend = dev_server_env.client.service_client.config.target_host
    task_queue = f"mtls-{uuid.uuid4()}"
    async with tls_front(pki, backend, require_client_cert=True) as front:
        env = processes.worker_env(
            temporal_address=front.address, database_url=seeded_database, houyi_url=simulator.url,
            metrics_port=0, task_queue=task_queue, simulator_speed=simulator.fleet.speed,
        )  # fmt: skip
        env.update(
            TEMPORAL_TLS_CLIENT_CERT_PATH=str(pki.client_cert),
            TEMPORAL_TLS_CLIENT_KEY_PATH=str(pki.client_key),
            TEMPORAL_TLS_SERVER_CA_CERT_PATH=str(pki.ca),
            TEMPORAL_TLS_SERVER_NAME=SERVER_NAME,
            OPSFLOW_RECYCLE_SCHEDULE="off",
        )
        worker = processes.worker(env, log_dir=tmp_path / "mtls", poll_address=backend).start()
        try:
            await worker.wait_ready(timeout=60)
            nc = await admin.first_nc("free")
            result = await direct_client.execute_workflow(
                "NcLock",
                lock_input(nc["nc_ip"]),
                id=f"0x410A01-mtls-{uuid.uuid4().hex[:8]}",
                task_queue=task_queue,
                result_type=OperationResult,
            )
        finally:
            worker.terminate()
        assert [host.status_after for host in result.hosts] == ["mlock"]
        assert front.accepted >= 1 and "commonName=opsflow-worker" in front.client_subjects
        started = [
            json.loads(line)
            for line in worker.log_path.read_text().splitlines()
            if line.startswith("{") and '"worker started"' in line
        ]
        assert started and started[-1]["temporal_connection"] == "mTLS"

        # The same endpoint refuses a worker without a client certificate: it exits 1 saying so.
        no_cert = {k: v for k, v in env.items() if "CLIENT" not in k} | {
            "TEMPORAL_API_KEY": API_KEY,
            "TEMPORAL_CONNECT_TIMEOUT_SECONDS": "10",
        }
        completed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(REPO / "worker.py")],
            env={**os.environ, **no_cert},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            check=False,
        )
    assert completed.returncode == 1, completed.stderr[-2000:]
    assert f"opsflow-worker: cannot reach Temporal at {front.address} (namespace default, TLS + API key)" in (
        completed.stderr
    )
    assert API_KEY not in completed.stdout + completed.stderr
    # No secret in the worker's log: the API key, the database password, the client key.
    log_text = worker.log_path.read_text()
    password = urlsplit(seeded_database).password
    assert password and password not in log_text and password not in completed.stdout + completed.stderr
    assert API_KEY not in log_text
    key_body = pki.client_key.read_text().splitlines()[1]
    assert key_body not in log_text
