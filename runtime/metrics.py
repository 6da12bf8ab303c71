"""The service's own Prometheus metrics (prometheus-client), shared by the worker's activities and its Houyi
adapter; the intake keeps its own (starter/app.py).

Labels stay low-cardinality: opscode, state, step, action, result, verdict, error type. Never a host, VM,
disk or workflow id: those belong in logs and in the store, not in a time series per value.

Counters move once per fact, not once per attempt: the activities count what the store reports as newly
written (an operation inserted, a state actually changed, an audit row actually added), so a retried
activity or a replayed workflow counts nothing twice. Gauges over open operations come from the shared store,
so every worker reports the same fleet-wide figure (aggregate them with ``max``, not ``sum``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from domain.opscodes import OpsCode

# The *_created series double every counter's series for a start time Prometheus does not need.
disable_created_metrics()

# store.lifecycle.AdmissionVerdict's values (tests/test_worker_metrics.py checks they agree).
ADMISSION_VERDICTS = ("admitted", "abandoned", "held_for_approval")

# Operations take from seconds (a lock) to a day (a deep offline waiting for its window).
_OPERATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400, 259200)
_HOUYI_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServiceMetrics:
    """Every metric of the worker, on one registry (a test builds its own to read them in isolation)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.operations_started = Counter(
            "opsflow_operations_started",
            "Operations recorded at their start",
            ["opscode", "source"],
            registry=r,
        )
        self.operations_finished = Counter(
            "opsflow_operations_finished",
            "Operations that reached an end state",
            ["opscode", "state"],
            registry=r,
        )
        self.operation_duration = Histogram(
            "opsflow_operation_duration_seconds",
            "Time from an operation's start to its end state",
            ["opscode", "state"],
            buckets=_OPERATION_BUCKETS,
            registry=r,
        )
        self.state_entered = Counter(
            "opsflow_operation_state_entered",
            "Non-final states entered (PendingApproval, Running, StepFailed)",
            ["opscode", "state"],
            registry=r,
        )
        self.operations_open = Gauge(
            "opsflow_operations_open",
            "Operations now in a non-final state, fleet-wide (from the store)",
            ["opscode", "state"],
            registry=r,
        )
        self.operations_oldest = Gauge(
            "opsflow_operations_oldest_seconds",
            "Age of the oldest operation in a non-final state since it entered that state, fleet-wide",
            ["opscode", "state"],
            registry=r,
        )
        self.admissions = Counter(
            "opsflow_admission_decisions",
            "Flow control and storm breaker decisions per host: admitted, abandoned (flow control), "
            "held_for_approval (storm breaker)",
            ["opscode", "verdict"],
            registry=r,
        )
        # A labelled counter appears only once incremented, and ``increase()`` misses its first event:
        # the rare verdicts (abandoned, held) exist at 0 from the start, so an alert over them sees the first.
        for opscode in OpsCode:
            for verdict in ADMISSION_VERDICTS:
                self.admissions.labels(opscode.value, verdict)
        self.approval_wait = Histogram(
            "opsflow_approval_wait_seconds",
            "Time an operation waited in PendingApproval, by the state it left to",
            ["opscode", "outcome"],
            buckets=_OPERATION_BUCKETS,
            registry=r,
        )
        self.step_failures = Counter(
            "opsflow_step_failures",
            "Steps that failed and waited for an operator",
            ["opscode", "step"],
            registry=r,
        )
        self.operator_actions = Counter(
            "opsflow_operator_actions",
            "Operator decisions and commands: approve, reject, retry_step, skip_step, abort, mark_complete, cancel",
            ["opscode", "action"],
            registry=r,
        )
        self.refusals = Counter(
            "opsflow_refusals",
            "Operations refused before touching anything",
            ["opscode", "error_type"],
            registry=r,
        )
        self.houyi_calls = Counter(
            "opsflow_houyi_calls",
            "Houyi calls by action and result (ok or the error type)",
            ["action", "result"],
            registry=r,
        )
        self.houyi_latency = Histogram(
            "opsflow_houyi_call_duration_seconds",
            "Houyi call latency",
            ["action"],
            buckets=_HOUYI_BUCKETS,
            registry=r,
        )


# Operator commands an audit row records; other audit actions are not operator actions.
OPERATOR_ACTIONS = frozenset(
    {
        "approve",
        "reject",
        "retry_step",
        "skip_step",
        "abort",
        "mark_complete",
        "cancel",
        "correct_migration",
        "relaunch",
    }
)

METRICS = ServiceMetrics()
