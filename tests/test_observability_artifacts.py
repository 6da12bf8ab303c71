"""The Prometheus alerting rules and the Grafana dashboard of the service itself (deploy/prometheus/,
deploy/grafana/): promtool (Debian's prometheus package, installed by the test setup where missing)
accepts the rules and a config that loads them, their unit tests pass, a broken copy is rejected, and
every metric the rules and the dashboard name is one the worker, the intake or the Temporal SDK exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "opsflow-dashboard.json"

# Every metric the rules and the dashboard may name, by the name a query uses, with its kind (a histogram
# is queried as <name>_bucket, _sum and _count). A later test compares this with what a live worker and
# intake expose.
KNOWN_METRICS: dict[str, str] = {
    # worker: runtime/metrics.py (prometheus-client: counters get _total)
    "opsflow_operations_started_total": "counter",  # opscode, source
    "opsflow_operations_finished_total": "counter",  # opscode, state (end state)
    "opsflow_operation_duration_seconds": "histogram",  # opscode, state
    "opsflow_operation_state_entered_total": "counter",  # opscode, state (non-final)
    "opsflow_operations_open": "gauge",  # opscode, state; fleet-wide: max over instances
    "opsflow_operations_oldest_seconds": "gauge",  # opscode, state; fleet-wide: max over instances
    "opsflow_admission_decisions_total": "counter",  # opscode, verdict
    "opsflow_approval_wait_seconds": "histogram",  # opscode, outcome
    "opsflow_step_failures_total": "counter",  # opscode, step
    "opsflow_operator_actions_total": "counter",  # opscode, action
    "opsflow_refusals_total": "counter",  # opscode, error_type
    "opsflow_houyi_calls_total": "counter",  # action, result
    "opsflow_houyi_call_duration_seconds": "histogram",  # action
    # intake: starter/app.py
    "opsflow_intake_requests_total": "counter",  # endpoint, code
    "opsflow_intake_request_seconds": "histogram",  # endpoint
    "opsflow_intake_alerts_total": "counter",  # outcome (domain.alerts.AlertOutcome)
    # the Temporal Python SDK (1.35, core's Prometheus exporter with PrometheusConfig's defaults as
    # runtime/temporal.py builds it): no unit suffix, no _total, latencies in milliseconds. Seen on
    # /metrics of a worker that ran a workflow, an activity, a failing activity, a failing workflow and a
    # describe of a missing workflow; the failure counters appear only once something failed.
    "temporal_activity_execution_failed": "counter",
    "temporal_activity_execution_latency": "histogram",
    "temporal_activity_schedule_to_start_latency": "histogram",
    "temporal_activity_succeed_endtoend_latency": "histogram",
    "temporal_activity_task_received": "counter",
    "temporal_long_request": "counter",
    "temporal_long_request_latency": "histogram",
    "temporal_num_pollers": "gauge",
    "temporal_request": "counter",
    "temporal_request_failure": "counter",
    "temporal_request_latency": "histogram",
    "temporal_sticky_cache_hit": "counter",
    "temporal_sticky_cache_size": "gauge",
    "temporal_worker_start": "counter",
    "temporal_worker_task_slots_available": "gauge",
    "temporal_worker_task_slots_used": "gauge",
    "temporal_workflow_completed": "counter",
    "temporal_workflow_endtoend_latency": "histogram",
    "temporal_workflow_failed": "counter",
    "temporal_workflow_task_execution_latency": "histogram",
    "temporal_workflow_task_queue_poll_succeed": "counter",
    "temporal_workflow_task_replay_latency": "histogram",
    "temporal_workflow_task_schedule_to_start_latency": "histogram",
    # Prometheus itself
    "up": "gauge",
}

EXPECTED_ALERTS = {
    "OpsflowWorkersDown",
    "OpsflowWorkerInstanceDown",
    "OpsflowIntakeDown",
    "OpsflowIntakeInstanceDown",
    "OpsflowOperationStuckInStepFailed",
    "OpsflowApprovalPendingTooLong",
    "OpsflowOperationsStalled",
    "OpsflowStepFailuresRepeating",
    "OpsflowFlowControlAbandonsSpike",
    "OpsflowStormBreakerHolding",
    "OpsflowHouyiErrorRatioHigh",
    "OpsflowHouyiLatencyHigh",
    "OpsflowWorkerTaskSlotsExhausted",
    "OpsflowWorkflowTaskScheduleToStartHigh",
    "OpsflowActivityScheduleToStartHigh",
    "OpsflowTemporalRequestsFailing",
    "OpsflowIntake5xxRatioHigh",
    "OpsflowIntakeLatencyHigh",
    "OpsflowIntakeAlertsUnavailable",
    "OpsflowIntakeAlertsRefused",
}

EXPECTED_PANELS = [
    "Operations started",
    "Operations finished",
    "Open operations by state",
    "Oldest operation waiting in StepFailed / PendingApproval",
    "Approval wait p50 / p95",
    "Time to end state p50 / p95 by opscode",
    "Admission decisions",
    "Step failures by step",
    "Operator actions",
    "Houyi calls / s by result",
    "Houyi latency p99 by action",
    "Task slots available",
    "Task slots used",
    "Schedule-to-start latency",
    "Intake requests / s by code",
    "Intake latency p99 by endpoint",
    "Alerts by outcome",
]

# What a Grafana query may hold that PromQL does not: replaced before promtool parses it.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$window": "1h",
    "$opscode": ".*",
    "$instance": ".*",
}

_PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}


def known_series() -> set[str]:
    """The names a query may select: histograms as their _bucket, _sum and _count series."""
    names: set[str] = set()
    for name, kind in KNOWN_METRICS.items():
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label matchers, ranges,
    grouping clauses, function calls, keywords and numbers are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    found: set[str] = set()
    for match in re.finditer(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _PROMQL_WORDS:
            continue
        found.add(name)
    return found


def alerting_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return [panel for panel in panels if panel["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


def as_promql(expr: str) -> str:
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(variable, value)
    return expr


def promtool_run(promtool: str, *args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


# ---- the rules ---------------------------------------------------------------------------------------------


def test_promtool_accepts_the_rules_and_counts_every_one(promtool: str) -> None:
    checked = promtool_run(promtool, "check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", checked.stdout)
    assert found, checked.stdout
    assert int(found.group(1)) == len(alerting_rules()) == len(EXPECTED_ALERTS)
    assert {rule["alert"] for rule in alerting_rules()} == EXPECTED_ALERTS


def test_every_alert_has_a_duration_a_severity_and_says_what_to_do() -> None:
    for rule in alerting_rules():
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["labels"]["service"] == "ecs-opsflow", rule["alert"]
        for annotation in ("summary", "description", "runbook"):
            assert rule["annotations"].get(annotation, "").strip(), (rule["alert"], annotation)


def test_no_rule_keeps_a_high_cardinality_label() -> None:
    """Rules keep to opscode, state, step, action, worker_type, task_queue, instance: never a host, a VM,
    a disk or a workflow id."""
    for rule in alerting_rules():
        for label in ("nc_ip", "host", "vm", "disk", "workflow_id", "fingerprint"):
            assert not re.search(rf"\b{label}\b", rule["expr"]), (rule["alert"], label)


def test_the_rule_unit_tests_pass_and_fire_every_alert(promtool: str) -> None:
    tested = promtool_run(promtool, "test", "rules", RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
    fired = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                fired.add(check["alertname"])
    assert fired == EXPECTED_ALERTS


def test_a_rule_with_bad_promql_is_rejected(promtool: str, tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yml"
    text = RULES.read_text()
    assert "sum by (opscode) (" in text
    broken.write_text(text.replace("sum by (opscode) (", "sum by (opscode (", 1))
    checked = promtool_run(promtool, "check", "rules", broken)
    assert checked.returncode != 0
    assert "FAILED" in checked.stdout + checked.stderr
    assert "parse error" in checked.stdout + checked.stderr


def test_a_prometheus_config_that_loads_the_rules_is_valid(promtool: str, tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 15s
  evaluation_interval: 1m
rule_files:
  - {RULES}
scrape_configs:
  - job_name: opsflow-worker
    static_configs:
      - targets: ["127.0.0.1:9464"]
  - job_name: opsflow-intake
    static_configs:
      - targets: ["127.0.0.1:8080"]
"""
    )
    checked = promtool_run(promtool, "check", "config", config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in checked.stdout


# ---- the dashboard -----------------------------------------------------------------------------------------


def test_the_dashboard_is_a_templated_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "ecs-opsflow"
    assert board["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("opscode", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["multi"] and variables[name]["includeAll"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_queries_prometheus_through_the_datasource_variable() -> None:
    panels = dashboard_panels()
    titles = [panel["title"] for panel in panels]
    for expected in EXPECTED_PANELS:
        assert any(title.startswith(expected) for title in titles), expected
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for key in ("h", "w", "x", "y"):
            assert key in panel["gridPos"], panel["title"]


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query (with Grafana's variables filled in) as a recording rule."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}", "expr": as_promql(expr)}
                    for index, expr in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool_run(promtool, "check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(dashboard_exprs())} rules found" in checked.stdout


# ---- metric names ------------------------------------------------------------------------------------------


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (action, le) (rate(opsflow_houyi_call_duration_seconds_bucket{job="w", '
        'result!="ok"}[5m]))) > 5 and on (action) max(up offset 1h) or vector(0) unless '
        'absent(opsflow_operations_open{state=~"$state"}) * 1e3'
    )
    assert metric_names(expr) == {
        "opsflow_houyi_call_duration_seconds_bucket",
        "up",
        "opsflow_operations_open",
    }


def test_every_metric_the_rules_and_the_dashboard_name_is_known() -> None:
    series = known_series()
    named: dict[str, set[str]] = {}
    for rule in alerting_rules():
        named[rule["alert"]] = metric_names(rule["expr"])
    for panel in dashboard_panels():
        named[panel["title"]] = set().union(*(metric_names(target["expr"]) for target in panel["targets"]))
    for where, names in named.items():
        assert names, where
        assert names <= series, (where, names - series)
    used = set().union(*named.values())
    # each of the service's own metrics shows somewhere
    for name, kind in KNOWN_METRICS.items():
        if name.startswith("opsflow_"):
            selected = {f"{name}_bucket", f"{name}_count"} if kind == "histogram" else {name}
            assert used & selected, name


def test_intake_alert_outcomes_are_the_ones_the_intake_counts() -> None:
    from domain.alerts import AlertOutcome

    outcomes = {outcome.value for outcome in AlertOutcome}
    quoted = set(re.findall(r'outcome="([a-z_]+)"', RULES.read_text()))
    assert quoted and quoted <= outcomes
