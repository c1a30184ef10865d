"""How the CLI prints a result for people and scripts."""

from __future__ import annotations

import json
from typing import Any


def out(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))
