"""Every benchmark's figures in one table: reads bench/results/*.json, writes bench/results.md.

    .venv/bin/python -m bench.report                  # writes bench/results.md
    .venv/bin/python -m bench.report --since EPOCH    # also: results older than EPOCH are stale

Each benchmark writes ``bench/results/<name>.json`` next to its Markdown (``write_results_json`` below):

    {"name": ..., "command": "python -m bench.<module>", "seconds": <whole run>,
     "rows": [{"metric": ..., "value": <number>, "unit": ..., "target": "<= 1.10" or "", "ok": true|false|null}],
     "finished": "<ISO time>", "cores": ..., "load_before": ...}          # the last three optional

The report expects one file per benchmark of ``make bench`` (``EXPECTED``). One that is missing, unreadable,
or (with ``--since``, which ``make bench`` passes: the time it began) written before this run, gets a row
saying so, and the report exits 1 after writing the table, so ``make bench`` fails visibly. A target missed
is a measurement, not an error: it shows **NO** in the table (``--strict`` makes it exit 1 too).
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).parent
RESULTS_DIR = BENCH / "results"
REPORT = BENCH / "results.md"
# The benchmarks of `make bench`, in its order: (JSON file stem, module).
EXPECTED: tuple[tuple[str, str], ...] = (
    ("evacuation", "bench.evacuation"),
    ("intake", "bench.intake"),
    ("sizing", "bench.sizing"),
    ("open_workflows", "bench.open_workflows"),
    ("overhead", "bench.overhead"),
    ("growth", "bench.growth"),
)

_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}
_TARGET = re.compile(r"^\s*(<=|>=|==|<|>)\s*([-+]?[0-9][0-9_,]*(?:\.[0-9]+)?)\s*$")


def meets(value: float, target: str) -> bool:
    """Whether ``value`` meets a target such as ``<= 1.10`` (``<``, ``>=``, ``>``, ``==`` likewise)."""
    found = _TARGET.match(target)
    if found is None:
        raise ValueError(f"target {target!r} is not '<op> <number>'")
    return _COMPARISONS[found.group(1)](value, float(found.group(2).replace(",", "").replace("_", "")))


@dataclass(frozen=True)
class Row:
    """One figure of a benchmark; ``ok`` is None when it has no target."""

    metric: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None


def row(metric: str, value: float, unit: str, target: str = "") -> Row:
    """A row whose ``ok`` follows from its target (none: ``ok`` is None)."""
    ok = meets(value, target) if target and math.isfinite(value) else (False if target else None)
    return Row(metric=metric, value=value, unit=unit, target=target, ok=ok)


def write_results_json(
    stem: str, module: str, seconds: float, rows: Sequence[Row], *, load_before: float | None = None
) -> Path:
    """``bench/results/<stem>.json`` in the shape above; its path."""
    path = RESULTS_DIR / f"{stem}.json"
    document: dict[str, Any] = {
        "name": stem,
        "command": f"python -m {module}",
        "seconds": round(seconds, 1),
        "rows": [asdict(r) for r in rows],
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "load_before": None if load_before is None else round(load_before, 2),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


# ---- the report -------------------------------------------------------------------------------------------


@dataclass
class Benchmark:
    stem: str
    module: str
    document: dict[str, Any] | None
    problem: str | None  # missing, unreadable or stale: why its figures cannot be trusted for this run
    finished: datetime | None

    @property
    def markdown(self) -> Path:
        return RESULTS_DIR / f"{self.stem}.md"


def _finished(document: dict[str, Any], path: Path) -> datetime:
    stamp = document.get("finished")
    if isinstance(stamp, str):
        try:
            parsed = datetime.fromisoformat(stamp)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def _problem_with(document: Any) -> str | None:
    if not isinstance(document, dict):
        return "not a JSON object"
    rows = document.get("rows")
    if not isinstance(rows, list) or not rows:
        return "no rows"
    for index, item in enumerate(rows):
        if not isinstance(item, dict) or not isinstance(item.get("metric"), str):
            return f"row {index} has no metric"
        value = item.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"row {index} ({item['metric']}): value {value!r} is not a number"
    return None


def load(stem: str, module: str, since: float | None) -> Benchmark:
    path = RESULTS_DIR / f"{stem}.json"
    if not path.exists():
        return Benchmark(
            stem, module, None, f"missing: {path.name} was not written (`python -m {module}`)", None
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return Benchmark(stem, module, None, f"unreadable {path.name}: {error}", None)
    problem = _problem_with(document)
    if problem is not None:
        return Benchmark(stem, module, None, f"malformed {path.name}: {problem}", None)
    finished = _finished(document, path)
    if since is not None and finished.timestamp() < since:
        when = f"{finished:%Y-%m-%d %H:%M} UTC"
        return Benchmark(
            stem, module, document, f"stale: {path.name} is from {when}, before this run began", finished
        )
    return Benchmark(stem, module, document, None, finished)


def discover(since: float | None) -> list[Benchmark]:
    """The expected benchmarks, then any other results/*.json, by name."""
    known = {stem for stem, _ in EXPECTED}
    extra = sorted(p.stem for p in RESULTS_DIR.glob("*.json") if p.stem not in known)
    return [load(stem, module, since) for stem, module in (*EXPECTED, *((s, f"bench.{s}") for s in extra))]


def number(value: float | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) >= 10):
        return f"{int(value):,}"
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def verdict(ok: Any) -> str:
    return {True: "yes", False: "**NO**"}.get(ok, "") if isinstance(ok, bool) else ""


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def machine() -> str:
    model = ""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = found.group(1).strip() if found else ""
    except OSError:
        pass
    memory = ""
    try:
        found = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        memory = f", {int(found.group(1)) / 1024 / 1024:.1f} GiB RAM" if found else ""
    except OSError:
        pass
    one, five, fifteen = os.getloadavg()
    return (
        f"{os.cpu_count()} cores{f' ({model})' if model else ''}{memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; load average now {one:.2f} / {five:.2f} / "
        f"{fifteen:.2f} (1 / 5 / 15 min)"
    )


def render(benchmarks: list[Benchmark], since: float | None) -> str:
    now = datetime.now(UTC)
    lines = [
        "# Benchmarks (bench/report.py)",
        "",
        f"Written {now:%Y-%m-%d %H:%M} UTC by `python -m bench.report` from `bench/results/*.json`.",
        "",
        f"Machine: {machine()}.",
        "",
    ]
    if since is not None:
        lines += [
            f"`make bench` wall time (every benchmark, then this report): {time.time() - since:.0f} s.",
            "",
        ]
    lines += ["| benchmark | metric | value | target | ok |", "| --- | --- | ---: | --- | --- |"]
    for bench in benchmarks:
        if bench.problem is not None:
            lines.append(f"| {bench.stem} | {cell(bench.problem)} | | | **{bench.problem.split(':')[0]}** |")
        if bench.document is None:
            continue
        for item in bench.document["rows"]:
            unit = str(item.get("unit") or "")
            value = number(item.get("value"))
            shown = f"{value} {unit}".strip() if value != "n/a" else value
            lines.append(
                f"| {bench.stem} | {cell(item['metric'])} | {cell(shown)} | {cell(str(item.get('target') or ''))} "
                f"| {verdict(item.get('ok'))} |"
            )
    lines += ["", "Details, one file per benchmark:", ""]
    for bench in benchmarks:
        document = bench.document or {}
        facts = []
        if isinstance(document.get("seconds"), int | float):
            facts.append(f"ran {document['seconds']:.0f} s")
        if bench.finished is not None:
            facts.append(f"finished {bench.finished:%Y-%m-%d %H:%M} UTC")
        if isinstance(document.get("load_before"), int | float):
            facts.append(f"load average {document['load_before']:.2f} when it began")
        link = (
            f"[results/{bench.stem}.md](results/{bench.stem}.md)"
            if bench.markdown.exists()
            else "no Markdown"
        )
        command = document.get("command") or f"python -m {bench.module}"
        lines.append(f"- **{bench.stem}** (`{command}`): {link}{'; ' + ', '.join(facts) if facts else ''}")
        if bench.problem is not None:
            lines.append(f"  - {bench.problem}")
    missed = [
        f"{bench.stem}: {item['metric']}"
        for bench in benchmarks
        if bench.document is not None
        for item in bench.document["rows"]
        if item.get("ok") is False
    ]
    judged = sum(
        1
        for bench in benchmarks
        if bench.document
        for item in bench.document["rows"]
        if item.get("ok") is not None
    )
    ran = [
        b.document["seconds"]
        for b in benchmarks
        if b.document and isinstance(b.document.get("seconds"), int | float)
    ]
    lines += [
        "",
        f"Sum of the benchmarks' own run times: {sum(ran):.0f} s ({len(ran)} of {len(benchmarks)}).",
    ]
    lines += ["", f"Targets met: {judged - len(missed)} of {judged}."]
    if missed:
        lines += ["Missed: " + "; ".join(missed) + "."]
    problems = [b for b in benchmarks if b.problem is not None]
    if problems:
        lines += [f"Not measured in this run: {', '.join(b.stem for b in problems)}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--since", type=float, help="epoch seconds the run began: older results are stale")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed too")
    args = parser.parse_args(argv)
    benchmarks = discover(args.since)
    text = render(benchmarks, args.since)
    REPORT.write_text(text, encoding="utf-8")
    print(text)
    problems = [b for b in benchmarks if b.problem is not None]
    for bench in problems:
        print(f"bench.report: {bench.stem}: {bench.problem}", file=sys.stderr)
    missed = any(
        item.get("ok") is False for b in benchmarks if b.document is not None for item in b.document["rows"]
    )
    if problems or (args.strict and missed):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
