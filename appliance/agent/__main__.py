"""``python -m appliance.agent`` / ``appliance agent``: run the model agent.

    appliance agent --socket /run/appliance-agent/agent.sock \
        --model /usr/share/appliance/models/hailo-qwen2.5-1.5b-instruct.toml \
        --broker-uid 991

Listens on the socket, loads the manifest, checks the model file's sha256,
loads the model, warms the fixed prompts' cache, and serves the socket until
SIGTERM/SIGINT (requests sent before then wait in the socket's backlog).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from appliance.agent.backends import make_backend
from appliance.agent.models import default_manifest_path, load_manifest
from appliance.agent.planner import Planner
from appliance.agent.server import AgentServer, listen, unlisten
from appliance.errors import ApplianceError

log = logging.getLogger("appliance.agent")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="appliance agent", description="Run the model agent on a Unix socket."
    )
    p.add_argument("--socket", required=True, type=Path, help="the Unix socket to serve")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"a model manifest (default: {default_manifest_path()})",
    )
    p.add_argument(
        "--broker-uid",
        type=int,
        default=None,
        help="the only uid answered (default: this process's own uid)",
    )
    p.add_argument(
        "--no-warm", action="store_true", help="skip evaluating the fixed prompts at start"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent %(message)s")
    if os.geteuid() == 0:
        log.warning("running as root: in production the agent runs as its own unprivileged user")
    # Listen first: the model's check and load take seconds (minutes on a
    # loaded machine), and a request sent meanwhile should wait in the
    # backlog, not find nothing there and fail as "not running".
    try:
        sock = listen(args.socket)
    except (OSError, ApplianceError) as e:
        print(f"appliance agent: cannot serve {args.socket}: {e}", file=sys.stderr)
        return 2
    try:
        manifest = load_manifest(args.model or default_manifest_path())
        backend = make_backend(manifest)
    except ApplianceError as e:
        unlisten(sock, args.socket)  # waiting requests see the agent gone
        print(f"appliance agent: {e.reason}", file=sys.stderr)
        return 2
    log.info("model %s (sha256 %s) on %s", manifest.name, manifest.sha256, manifest.backend)
    planner = Planner(backend)
    server = AgentServer(args.socket, planner, broker_uid=args.broker_uid, sock=sock)

    def _stop(signum: int, frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        if not args.no_warm:
            try:
                planner.warm()
            except ApplianceError as e:
                log.warning("warm-up failed (serving anyway): %s", e.reason)
        server.serve_forever()
    finally:
        server.close()
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
