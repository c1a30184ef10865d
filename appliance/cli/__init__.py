"""``appliance``: run the box (``up``) and talk to it (the rest).

Commands on the box (``box.py``) reach the running broker over its local
control socket (``STATE_DIR/control.sock``, owner-only); desktop commands
(``desktop.py``, ``pairing.py``) use the LAN API through
``appliance.client``. Every command answers people by default and exact
JSON with ``--json``; a refusal is one line with its reason and an exit
code from ``output.EXIT_CODES``, never a traceback.
"""

from __future__ import annotations

import sys

from appliance.cli.output import (
    INTERRUPTED,
    NOT_PAIRED,
    REFUSED,
    UNREACHABLE,
    USAGE,
    WAITING,
    Output,
    UsageError,
)
from appliance.cli.parser import build_parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"]:
        # The agent has its own command line (and its own process and user).
        from appliance.agent.__main__ import main as agent_main

        return agent_main(argv[1:])
    args = build_parser().parse_args(argv)
    from appliance.approval import BrokerNotRunning
    from appliance.client import ClientError, NotPaired, NotTheBox, Unreachable
    from appliance.errors import ApplianceError

    out = Output(as_json=getattr(args, "json", False))
    try:
        return int(args.func(args, out))
    except UsageError as e:
        out.error(str(e))
        return USAGE
    except NotPaired as e:
        out.error(e.reason)
        return NOT_PAIRED
    except (Unreachable, NotTheBox) as e:
        out.error(e.reason)
        return UNREACHABLE
    except ClientError as e:
        out.error(f"refused: {e}")
        return REFUSED
    except BrokerNotRunning as e:
        out.error(e.reason)
        return UNREACHABLE
    except ApplianceError as e:
        out.error(e.reason)
        return REFUSED
    except TimeoutError as e:
        out.error(str(e) or "gave up waiting")
        return WAITING
    except OSError as e:  # a file named on the command line, a socket
        out.error(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        return USAGE
    except KeyboardInterrupt:
        out.error("interrupted")
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
