"""How the CLI answers: readable for people by default, exact JSON for scripts.

Every command hands ``Output.result`` two things: the JSON value (printed
as is with ``--json``, the box's own answer where there is one) and a
function that renders it for people with rich (tables, numbered plans,
what to do next). Colours and spinners only on a terminal (rich decides;
``NO_COLOR`` is honoured). Text that came from the box or the shares (file
names, summaries) is shown literally: never read as markup, control
characters removed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from rich.console import Console
from rich.control import strip_control_codes
from rich.text import Text

# Exit codes (README and docs/mcp.md list them).
OK = 0
REFUSED = 1  # the box said no: denied, expired, failed, an error answer; a check failed
USAGE = 2  # bad usage or input
UNREACHABLE = 3  # the box cannot be reached, or it is not the box pinned
NOT_PAIRED = 4  # this desktop holds no credential
WAITING = 5  # gave up waiting: it still waits for the press
INTERRUPTED = 130

EXIT_CODES = {
    OK: "done",
    REFUSED: "refused or failed: the box said no (denied, expired, failed, an error), "
    "or a check failed",
    USAGE: "bad usage or input",
    UNREACHABLE: "the box (or the broker) cannot be reached, or it is not the box pinned",
    NOT_PAIRED: "this desktop is not paired (no credential)",
    WAITING: "gave up waiting: it still waits for the press on the box",
    INTERRUPTED: "interrupted",
}


class UsageError(Exception):
    """Bad usage or input (exit code 2), with what to do instead."""


def plain(value: object) -> Text:
    """Data shown literally: no markup, no control characters."""
    return Text(strip_control_codes(str(value)))


class Output:
    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def result(self, value: Any, render: Callable[[Console], None] | None = None) -> None:
        """The command's answer: JSON on stdout with --json, else ``render``."""
        if self.as_json or render is None:
            sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
            sys.stdout.flush()
        else:
            render(self.out)

    def say(self, *parts: str | Text, style: str | None = None) -> None:
        """A progress line (stderr, so stdout stays the answer; with --json
        too: the person running a script still needs the code to match)."""
        self.err.print(*parts, style=style)

    def error(self, message: str) -> None:
        self.err.print(Text("appliance: ", style="bold red") + plain(message))

    @contextmanager
    def waiting(self, message: str) -> Iterator[Callable[[str], None]]:
        """A spinner while waiting (a press, the model), on a terminal only;
        yields a function that changes its message."""
        spin = self.err.is_terminal and not self.as_json
        status = self.err.status(plain(message)) if spin else nullcontext()
        with status as shown:

            def update(text: str) -> None:
                if shown is not None:
                    shown.update(plain(text))

            yield update
