"""Fuzzing the intake from its own OpenAPI document (schemathesis): whatever is sent, no 5xx but the 503 a
down part may give, no unhandled error, every 4xx names the problem, and nothing generated starts an
operation it should not: only valid webhook alerts with a rule, and valid reports, may start one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.intake import IntakeUnderTest

pytestmark = pytest.mark.reliability

EXAMPLES_PER_OPERATION = 60


def fuzz(document: dict[str, Any], base_url: str, tokens: dict[str, str]) -> list[str]:
    """Runs every operation's generated cases (as admin, and with a random or no token); returns problems."""
    schema = schemathesis.openapi.from_dict(document)
    problems: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err would raise here: the document is ours

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(), who=st.sampled_from(["admin", "alice", "nobody", None]))
        def check(case: Any, who: str | None) -> None:
            headers = {} if who is None else {"Authorization": f"Bearer {tokens.get(who, 'x' * 24)}"}
            response = case.call(base_url=base_url, headers=headers, timeout=30)
            label = (
                f"{case.method} {case.formatted_path} as {who}: {response.status_code} {response.text[:300]}"
            )
            if response.status_code >= 500 and response.status_code != 503:
                problems.append(label)
            if 400 <= response.status_code < 500:
                body = response.json()
                if not (isinstance(body, dict) and body.get("error") and body.get("message")):
                    problems.append(f"a 4xx without error and message: {label}")

        check()
    return problems


async def test_generated_requests_never_get_a_5xx_and_every_4xx_names_the_problem(
    intake: IntakeUnderTest,
) -> None:
    _, document = await intake.call("GET", "/openapi.json", who=None)

    problems = await asyncio.to_thread(fuzz, document, intake.url, intake.tokens)

    assert problems == [], "\n".join(problems[:20])
    _, metrics = await intake.call("GET", "/metrics", who=None)
    assert 'code="500"' not in metrics
    requests = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("opsflow_intake_requests_total{")
    )
    assert requests >= 4 * EXAMPLES_PER_OPERATION * 0.5, f"only {requests} requests were sent"
