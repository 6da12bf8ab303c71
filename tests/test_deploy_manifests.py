"""The deployment files are valid and agree with the code.

- deploy/compose/docker-compose.yml passes ``docker-compose config`` (Debian's docker-compose 1.29, installed
  by the test setup where missing; it validates against the Compose Specification without a Docker engine),
  and a copy with a misspelt key does not;
- every manifest in deploy/k8s passes kubernetes-validate in strict mode (unknown fields rejected) against a
  pinned Kubernetes version, and one with an unknown field does not;
- the environment they set is what our processes read, the probes and scrapes hit the ports our processes
  serve, and the commands they run are entry points the package installs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
PROMETHEUS_CONFIG = COMPOSE_DIR / "prometheus.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
DOCKER_COMPOSE = "/usr/bin/docker-compose"
# The Kubernetes version the manifests are written for; kubernetes-validate ships its schemas.
KUBERNETES_VERSION = "1.31.0"

# Sources whose environment reads define which variable names exist.
CONFIG_SOURCES = (
    "runtime/config.py",
    "starter/__main__.py",
    "simulator/__main__.py",
    "worker.py",
    "store/seed.py",
)
# Being added to runtime/config.py (Temporal TLS and API key): valid whether or not that has landed yet.
TEMPORAL_CONNECTION_VARIABLES = {
    "TEMPORAL_TLS",
    "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
    "TEMPORAL_TLS_SERVER_NAME",
    "TEMPORAL_API_KEY",
}
OUR_IMAGE = "ecs-opsflow"


# ---- helpers ------------------------------------------------------------------------------------------------


def variables_read_by_code() -> set[str]:
    """Every environment variable name our processes read: the quoted ``NAME_WITH_UNDERSCORES`` literals of the
    modules that read the environment (``_env("HOUYI_URL", ...)``, ``os.environ.get("DATABASE_URL")``, tables
    of field -> variable name, ``TLS_ENV = "TEMPORAL_TLS"``), whichever way they spell the reading."""
    names: set[str] = set()
    for relative in CONFIG_SOURCES:
        source = (ROOT / relative).read_text(encoding="utf-8")
        names |= set(re.findall(r"[\"']([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)[\"']", source))
    return names | TEMPORAL_CONNECTION_VARIABLES


def project_scripts() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    scripts: dict[str, str] = pyproject["project"]["scripts"]
    return scripts


def assert_runs_our_code(command: list[str], where: str) -> None:
    """An installed entry point, or ``python -m <module>`` of a module in this repository."""
    assert command, f"{where}: no command"
    if command[0] in ("python", "python3") and len(command) >= 3 and command[1] == "-m":
        module = command[2].replace(".", "/")
        assert (ROOT / f"{module}.py").is_file() or (ROOT / module / "__main__.py").is_file(), (
            f"{where}: python -m {command[2]} is no module of this repository"
        )
    else:
        assert command[0] in project_scripts(), (
            f"{where}: {command[0]!r} is not in pyproject [project.scripts] {sorted(project_scripts())}"
        )


def graceful_shutdown_seconds() -> int:
    match = re.search(
        r"graceful_shutdown_timeout=timedelta\(seconds=(\d+)\)", (ROOT / "worker.py").read_text()
    )
    assert match, "worker.py no longer sets graceful_shutdown_timeout=timedelta(seconds=N)"
    return int(match.group(1))


def seconds(duration: str) -> float:
    """A compose duration (``30s``, ``1m30s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# ---- docker compose -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_compose() -> str:
    if not Path(DOCKER_COMPOSE).exists():
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "docker-compose"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    assert shutil.which(DOCKER_COMPOSE), f"{DOCKER_COMPOSE} is not installed"
    return DOCKER_COMPOSE


def run_compose(docker_compose: str, compose_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose config ...`` with deploy/compose as the project directory (relative paths, .env),
    without the caller's COMPOSE_* settings and with no Docker engine to talk to."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COMPOSE_", "DOCKER_"))}
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    return subprocess.run(
        [docker_compose, "--project-directory", str(COMPOSE_DIR), "-f", str(compose_file), "config", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


@pytest.fixture(scope="session")
def compose(docker_compose: str) -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, paths absolute)."""
    checked = run_compose(docker_compose, COMPOSE_FILE, "-q")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == ""
    resolved = run_compose(docker_compose, COMPOSE_FILE)
    assert resolved.returncode == 0, resolved.stderr
    config: dict[str, Any] = yaml.safe_load(resolved.stdout)
    return config


def our_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if "build" in service or str(service.get("image", "")).startswith(f"{OUR_IMAGE}:")
    }


def workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in our_services(compose).items()
        if service.get("command", [None])[0] == "opsflow-worker"
    }


def replicas(service: dict[str, Any]) -> int:
    return int(service.get("deploy", {}).get("replicas", service.get("scale", 1)))


def test_compose_file_is_valid_and_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert sum(replicas(service) for service in workers(compose).values()) == 2
    for name in (
        "intake",
        "temporal",
        "temporal-ui",
        "temporal-postgresql",
        "opsflow-postgres",
        "houyi-sim",
        "prometheus",
        "grafana",
    ):
        assert name in services, f"compose has no service {name}"
    assert services["temporal"]["image"].startswith("temporalio/auto-setup:")
    assert services["temporal"]["environment"]["DB"] == "postgres12"
    assert services["temporal"]["environment"]["POSTGRES_SEEDS"] == "temporal-postgresql"
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert services["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert services["houyi-sim"]["command"][:3] == ["python", "-m", "simulator"]

    # Our store is its own PostgreSQL, not Temporal's.
    store_url = services["intake"]["environment"]["DATABASE_URL"]
    assert store_url.startswith("postgresql://")
    assert "@opsflow-postgres:5432/" in store_url

    for name, worker in workers(compose).items():
        env = worker["environment"]
        for variable in ("TEMPORAL_ADDRESS", "DATABASE_URL", "HOUYI_URL", "WORKER_METRICS_PORT"):
            assert env.get(variable), f"{name} does not set {variable}"
        assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
        assert env["DATABASE_URL"] == store_url
        assert env["HOUYI_URL"] == "http://houyi-sim:8090"
        assert worker["depends_on"]["temporal"]["condition"] == "service_healthy"
        assert worker["build"]["dockerfile"] == "deploy/compose/Dockerfile"
        assert Path(worker["build"]["context"]) == ROOT
        assert "healthcheck" in worker


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda text: text.replace("    environment:", "    enviroment:", 1), "enviroment"),
        (
            lambda text: text.replace("condition: service_healthy", "condition: service_happy", 1),
            "service_happy",
        ),
        (lambda text: text.replace("  worker-2:\n", "  worker-2:\n    replicas: two\n", 1), "replicas"),
    ],
    ids=["misspelt-key", "unknown-condition", "unknown-service-option"],
)
def test_a_broken_compose_file_is_rejected(
    docker_compose: str, tmp_path: Path, breakage: Any, message: str
) -> None:
    original = COMPOSE_FILE.read_text(encoding="utf-8")
    broken_text = breakage(original)
    assert broken_text != original
    intact = tmp_path / "intact.yml"
    intact.write_text(original, encoding="utf-8")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(broken_text, encoding="utf-8")
    # The same file from the same place passes: what fails is the breakage, not the copy.
    assert run_compose(docker_compose, intact, "-q").returncode == 0
    result = run_compose(docker_compose, broken, "-q")
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_compose_sets_only_variables_our_code_reads(compose: dict[str, Any]) -> None:
    known = variables_read_by_code()
    for name, service in our_services(compose).items():
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"compose service {name} sets {sorted(unknown)}, which no code of ours reads"
        assert_runs_our_code(service["command"], f"compose service {name}")


def test_compose_health_checks_and_scrapes_hit_the_ports_our_processes_serve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker_targets = set()
    for name, worker in workers(compose).items():
        port = int(worker["environment"]["WORKER_METRICS_PORT"])
        assert f"http://127.0.0.1:{port}/readyz" in " ".join(worker["healthcheck"]["test"])
        assert seconds(worker["stop_grace_period"]) > graceful_shutdown_seconds()
        worker_targets.add(f"{name}:{port}")
    intake = services["intake"]
    intake_port = int(intake["environment"]["OPSFLOW_INTAKE_PORT"])
    assert f"http://127.0.0.1:{intake_port}/readyz" in " ".join(intake["healthcheck"]["test"])

    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}

    def targets(job: str) -> set[str]:
        return {target for group in jobs[job]["static_configs"] for target in group["targets"]}

    assert targets("opsflow-worker") == worker_targets
    assert targets("opsflow-intake") == {f"intake:{intake_port}"}
    assert jobs["opsflow-worker"].get("metrics_path", "/metrics") == "/metrics"
    assert jobs["opsflow-intake"].get("metrics_path", "/metrics") == "/metrics"

    # The alert rules and the dashboard are the ones in the repository, mounted where the configs look.
    mounts = {
        Path(volume.split(":")[0]).resolve(): volume.split(":")[1]
        for service in ("prometheus", "grafana")
        for volume in services[service]["volumes"]
        if volume.startswith("/")
    }
    assert mounts[(COMPOSE_DIR / "prometheus.yml").resolve()] == "/etc/prometheus/prometheus.yml"
    assert prometheus["rule_files"] == [mounts[(ROOT / "deploy" / "prometheus" / "alerts.yml").resolve()]]
    dashboard_target = mounts[(ROOT / "deploy" / "grafana" / "opsflow-dashboard.json").resolve()]
    provisioning = COMPOSE_DIR / "grafana" / "provisioning"
    assert mounts[provisioning.resolve()] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "opsflow.yml").read_text())["providers"]
    assert [provider["options"]["path"] for provider in providers] == [str(Path(dashboard_target).parent)]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [source["url"] for source in datasources] == ["http://prometheus:9090"]
    assert "prometheus" in services


PROMTOOL = "/usr/bin/promtool"


@pytest.fixture(scope="session")
def promtool() -> str:
    if not Path(PROMTOOL).exists():
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    assert shutil.which(PROMTOOL), f"{PROMTOOL} is not installed"
    return PROMTOOL


def k8s_scrape_config() -> dict[str, Any]:
    scrape = k8s_object("ConfigMap", "opsflow-prometheus-scrape")["data"]["opsflow-scrape.yml"]
    config: dict[str, Any] = yaml.safe_load(scrape)
    return config


def promtool_check(promtool: str, config: dict[str, Any], path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("which", ["compose", "k8s"])
def test_prometheus_config_passes_promtool(promtool: str, tmp_path: Path, which: str) -> None:
    """deploy/compose/prometheus.yml (with its rule file where the repository has it; compose mounts it
    there), and the scrape jobs deploy/k8s gives the cluster's Prometheus."""
    if which == "compose":
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
        alerts = ROOT / "deploy" / "prometheus" / "alerts.yml"
        if alerts.exists():
            config["rule_files"] = [str(alerts)]
        else:
            del config["rule_files"]
    else:
        config = k8s_scrape_config()
        # Debian's Prometheus is built without Kubernetes discovery ("field kubernetes_sd_configs not found"):
        # promtool checks the rest of each job (relabelling, names, paths) with a static target instead.
        for job in config["scrape_configs"]:
            assert job.pop("kubernetes_sd_configs")[0]["namespaces"]["names"] == ["ecs-opsflow"]
            job["static_configs"] = [{"targets": ["pod.ecs-opsflow:9464"]}]
    result = promtool_check(promtool, config, tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # And it can fail: a scrape job without a name is refused.
    del config["scrape_configs"][0]["job_name"]
    assert promtool_check(promtool, config, tmp_path / "broken.yml").returncode != 0


def test_k8s_scrape_jobs_keep_our_pods_by_their_labels_and_port_names() -> None:
    jobs = {job["job_name"]: job for job in k8s_scrape_config()["scrape_configs"]}
    assert set(jobs) == {"opsflow-worker", "opsflow-intake"}
    for name, job in jobs.items():
        keeps = {
            rule["source_labels"][0]: rule["regex"]
            for rule in job["relabel_configs"]
            if rule.get("action") == "keep"
        }
        deployment = k8s_object("Deployment", name)
        assert (
            keeps["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
            == (deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"])
        )
        port_names = [
            port["name"] for port in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        ]
        assert [keeps["__meta_kubernetes_pod_container_port_name"]] == port_names
        assert job["metrics_path"] == "/metrics"


def test_mounted_alert_rules_and_dashboard_parse() -> None:
    """The alert rules and the dashboard that compose mounts (deploy/prometheus, deploy/grafana)."""
    alerts = ROOT / "deploy" / "prometheus" / "alerts.yml"
    dashboard = ROOT / "deploy" / "grafana" / "opsflow-dashboard.json"
    assert yaml.safe_load(alerts.read_text(encoding="utf-8"))["groups"]
    assert json.loads(dashboard.read_text(encoding="utf-8"))["panels"]
    # The jobs the rules and the dashboard select on are the ones compose and k8s scrape.
    selected = set(
        re.findall(r'job\s*=~?\s*\\?"([a-z][a-z0-9-]*)', alerts.read_text() + dashboard.read_text())
    )
    assert selected, "the rules select on no job"
    compose_jobs = {
        job["job_name"] for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    }
    k8s_jobs = {job["job_name"] for job in k8s_scrape_config()["scrape_configs"]}
    assert selected <= compose_jobs
    assert selected <= k8s_jobs


# ---- the image ----------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_builds_the_package_and_runs_an_entry_point_as_non_root() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    args = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert all(stage.split()[0] == "${PYTHON_IMAGE}" for stage in stages)
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), "the image does not pip install the package"
    assert "[dev]" not in runs
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    exposed = {port for keyword, rest in instructions if keyword == "EXPOSE" for port in rest.split()}
    assert {"9464", "8080"} <= exposed
    command = json.loads([rest for keyword, rest in instructions if keyword == "CMD"][-1])
    assert command == ["opsflow-worker"]
    assert_runs_our_code(command, "Dockerfile CMD")
    assert {"opsflow-worker", "opsflow-intake"} <= set(project_scripts())


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "var", ".git", "tests", ".pytest_cache", ".mypy_cache", ".ruff_cache"} <= ignored
    # What `pip install .` needs stays in.
    for needed in ("pyproject.toml", "worker.py", "runtime", "starter", "store", "deploy"):
        assert needed not in ignored


# ---- Kubernetes ---------------------------------------------------------------------------------------------


def k8s_files() -> list[Path]:
    return sorted(path for path in K8S_DIR.glob("*.yaml") if path.name != "kustomization.yaml")


def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in k8s_files():
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                yield path, document


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [obj for _, obj in k8s_objects() if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(path.name for path in k8s_files())
    namespace = k8s_object("Namespace", kustomization["namespace"])
    for path, obj in k8s_objects():
        if obj is not namespace and obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace["metadata"]["name"], (
                f"{path.name}: {obj['kind']}"
            )


@pytest.mark.parametrize("path", k8s_files(), ids=lambda path: path.name)
def test_k8s_manifest_validates_strictly(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    assert documents
    for document in documents:
        # Raises ValidationError, or SchemaNotFoundError for a kind/apiVersion this Kubernetes lacks.
        validated = kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        assert validated == "1.31"


@pytest.mark.parametrize(
    ("where", "field"),
    [
        (("spec",), "replica"),
        (("spec", "template", "spec", "containers", 0, "readinessProbe", "httpGet"), "paht"),
        (("spec", "template", "metadata"), "annotation"),
    ],
    ids=["spec.replica", "httpGet.paht", "metadata.annotation"],
)
def test_a_manifest_with_an_unknown_field_is_rejected(where: tuple[str | int, ...], field: str) -> None:
    deployment = copy.deepcopy(k8s_object("Deployment", "opsflow-worker"))
    node: Any = deployment
    for key in where:
        node = node[key]
    node[field] = "x"
    # Only strict mode catches it: without it an unknown field passes.
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=False)
    with pytest.raises(kubernetes_validate.ValidationError) as raised:
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    assert field in raised.value.message


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for _, obj in k8s_objects():
        if obj["kind"] == "Deployment":
            for container in obj["spec"]["template"]["spec"]["containers"]:
                yield obj["metadata"]["name"], obj, container


def test_k8s_sets_only_variables_our_code_reads_from_objects_that_exist() -> None:
    known = variables_read_by_code()
    settings = k8s_object("ConfigMap", "opsflow-settings")["data"]
    unknown = set(settings) - known
    assert not unknown, f"ConfigMap opsflow-settings sets {sorted(unknown)}, which no code of ours reads"
    secrets = {obj["metadata"]["name"]: obj for _, obj in k8s_objects() if obj["kind"] == "Secret"}
    for name, _, container in containers():
        assert_runs_our_code(container["command"], f"Deployment {name}")
        assert container["image"].split(":")[0] == OUR_IMAGE
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] == "opsflow-settings"
        for variable in container.get("env", []):
            assert variable["name"] in known, f"Deployment {name} sets {variable['name']}"
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference and not reference.get("optional"):
                assert reference["key"] in secrets[reference["name"]]["stringData"]
    assert {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "HOUYI_URL", "WORKER_METRICS_PORT"} <= set(settings)


def test_k8s_probes_scrapes_and_mounts_match_what_our_processes_serve_and_read() -> None:
    settings = k8s_object("ConfigMap", "opsflow-settings")["data"]
    ports = {
        "opsflow-worker": int(settings["WORKER_METRICS_PORT"]),
        "opsflow-intake": int(settings["OPSFLOW_INTAKE_PORT"]),
    }
    secrets = {obj["metadata"]["name"]: obj for _, obj in k8s_objects() if obj["kind"] == "Secret"}
    for name, deployment, container in containers():
        port = ports[name]
        assert [p["containerPort"] for p in container["ports"]] == [port]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > graceful_shutdown_seconds()
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["resources"]["requests"]["cpu"]
        # Every file path the settings name lies in a mounted Secret that has that key.
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
        file_settings = ["TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_KEY_PATH"]
        file_settings += ["TEMPORAL_TLS_SERVER_CA_CERT_PATH"]
        if name == "opsflow-intake":
            file_settings.append("OPSFLOW_TOKENS_FILE")
        for setting in file_settings:
            if setting not in settings:
                continue
            path = Path(settings[setting])
            assert str(path.parent) in mounts, f"{name}: {setting}={path} is in no mounted volume"
            secret_volume = mounts[str(path.parent)]["secret"]
            items = {item["path"]: item["key"] for item in secret_volume.get("items", [])}
            key = items.get(path.name, path.name) if items else path.name
            assert key in secrets[secret_volume["secretName"]]["stringData"], f"{name}: {setting}"

    worker = k8s_object("Deployment", "opsflow-worker")
    assert worker["spec"]["replicas"] == 3
    assert worker["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 1}
    assert k8s_object("Deployment", "opsflow-intake")["spec"]["replicas"] == 2

    service = k8s_object("Service", "opsflow-intake")
    intake = k8s_object("Deployment", "opsflow-intake")
    assert service["spec"]["selector"].items() <= intake["spec"]["template"]["metadata"]["labels"].items()
    named = {
        p["name"]: p["containerPort"] for p in intake["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert [named.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ports["opsflow-intake"]
    ]


def test_k8s_disruption_budgets_and_autoscaler_target_the_deployments() -> None:
    for name in ("opsflow-worker", "opsflow-intake"):
        budget = k8s_object("PodDisruptionBudget", name)
        labels = k8s_object("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    autoscaler = k8s_object("HorizontalPodAutoscaler", "opsflow-worker")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "opsflow-worker",
    }
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (3, 10)
    assert [metric["resource"]["name"] for metric in autoscaler["spec"]["metrics"]] == ["cpu"]
