"""The README's "ui-example" blocks: one paste-ready input per workflow type (workflow type, workflow id,
the state it lands in, the JSON input). The UI test types them into the Web UI; the fuzz tests mutate them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

README = Path(__file__).parent.parent / "README.md"
EXAMPLE = re.compile(
    r"^ui-example `(?P<type>[^`]+)` `(?P<id>[^`]+)` → `(?P<state>[^`]+)`\n```json\n(?P<input>.+?)\n```",
    re.M | re.S,
)


def examples() -> list[dict[str, Any]]:
    found = [m.groupdict() for m in EXAMPLE.finditer(README.read_text(encoding="utf-8"))]
    for example in found:
        example["input"] = json.loads(example["input"])
    return found
