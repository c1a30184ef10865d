"""Running the box: the broker and its control socket, the LAN API (TLS with
the device certificate), and in development the model agent as a child.

Fail closed, but say why: in production a broker that cannot start (no TPM,
a lockout, a log that does not verify, no panel) serves only the reason (503
on every call) over a temporary certificate, retries, and exits with status
75 once it could start, so the service manager restarts it with its real
certificate, whose key only the TPM can unlock.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from appliance.api.app import create_app
from appliance.api.connections import ConnectionLimits, server_config, tls_context
from appliance.api.degraded import Switch, unavailable_app
from appliance.api.tls import ensure_certificate
from appliance.approval import ControlServer, Panel
from appliance.approval.gpio import make_panel
from appliance.box import open_box
from appliance.broker.control import control_handler
from appliance.broker.service import Broker
from appliance.config import Config
from appliance.discovery import Advertiser
from appliance.errors import ApplianceError
from appliance.process import die_with_parent

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
EX_TEMPFAIL = 75  # "try again": the service manager restarts the broker


@dataclass(frozen=True)
class ServeOptions:
    tls: bool  # TLS even on loopback in development
    model: Path  # development: the manifest the agent runs
    agent: bool  # development: start the model agent
    retry_s: float  # production: how often to retry starting
    advertise: bool = True  # announce the box by mDNS when it serves TLS on the LAN


class _Running:
    """The broker and its control socket once they started; the panel is
    opened once, so its pins stay claimed across retries."""

    def __init__(self, config: Config, *, secure: bool) -> None:
        self.config = config
        self.secure = secure  # served over TLS: the console's cookies are Secure
        self.panel: Panel | None = None
        self.broker: Broker | None = None
        self.control: ControlServer | None = None
        self.switch = Switch(unavailable_app("starting"))

    def start(self) -> str | None:
        """Start the broker and its control socket; the reason if it cannot."""
        try:
            if self.panel is None:
                self.panel = make_panel(self.config.panel, dev=self.config.dev)
        except Exception as e:  # noqa: BLE001 - no GPIO, pin busy: fail closed, say why
            return f"the approval panel is unavailable ({type(e).__name__}: {e})"
        try:
            broker = open_box(self.config, panel=self.panel)
        except ApplianceError as e:
            self.panel.set_fault(e.reason)  # the light says nothing can run
            return e.reason
        try:
            control = ControlServer(self.config.control_socket, control_handler(broker)).start()
        except ApplianceError as e:
            broker.close()
            return e.reason
        self.broker, self.control = broker, control
        self.switch.app = create_app(broker, secure=self.secure)
        if broker.keystore.unsafe:
            print(
                "WARNING: UNSAFE development keys (not in a TPM). Do not use for real data.",
                flush=True,
            )
        return None

    def stop(self) -> None:
        if self.control is not None:
            self.control.stop()
        if self.broker is not None:
            self.broker.close()


def serve(config: Config, options: ServeOptions) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    use_tls = options.tls or not config.dev or config.host not in LOOPBACK
    running = _Running(config, secure=use_tls)
    reason = running.start()
    if reason is not None and config.dev:
        print(f"appliance: cannot start: {reason}", file=sys.stderr)
        return 2
    agent = None
    if reason is None and config.dev and options.agent:
        agent = start_agent(config, options.model)
    server: list[uvicorn.Server] = []
    tls: ssl.SSLContext | None
    fp: str | None = None  # the device certificate's fingerprint, advertised
    if reason is not None:
        tls = _degraded(config, running, reason, options.retry_s, server)
    elif use_tls:
        tls, fp = _device_tls(config, running)
    else:
        tls = None
        print("development mode: plain HTTP on loopback only", flush=True)
    scheme = "https" if tls else "http"
    print(f"appliance listening on {scheme}://{config.host}:{config.port}", flush=True)
    limits = connection_limits()
    server.append(
        uvicorn.Server(
            server_config(
                running.switch, host=config.host, port=config.port, limits=limits, tls=tls
            )
        )
    )
    advertiser = _advertise(config, running, fp) if options.advertise and reason is None else None
    try:
        server[0].run()
    finally:
        if advertiser is not None:
            advertiser.close()
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=10)
        running.stop()
    return EX_TEMPFAIL if reason is not None and running.broker is not None else 0


def connection_limits(limits: ConnectionLimits | None = None) -> ConnectionLimits:
    """The connection caps, kept under half the process's file-descriptor
    limit (LimitNOFILE in the unit): the rest is for the database, the audit
    log, the shares' files and the agent's socket."""
    limits = limits or ConnectionLimits()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and limits.total > soft // 2:
        limits = dataclasses.replace(
            limits, total=soft // 2, per_peer=min(limits.per_peer, soft // 2)
        )
    return limits


def _device_tls(config: Config, running: _Running) -> tuple[ssl.SSLContext, str]:
    assert running.broker is not None
    password = running.broker.keystore.secret("tls_key_password").hex()
    cert, key, fp = ensure_certificate(
        config.state_dir / "tls", [config.host, "localhost"], password.encode()
    )
    print(f"TLS certificate fingerprint (pin this on desktops): {fp}", flush=True)
    return tls_context(str(cert), str(key), password), fp


def _advertise(config: Config, running: _Running, fp: str | None) -> Advertiser | None:
    """mDNS, so desktops pair without typing an address (appliance.discovery):
    only for TLS on a LAN address, whose fingerprint desktops can pin."""
    if fp is None or config.host in LOOPBACK or running.broker is None:
        return None
    return Advertiser(config.host, config.port, fp, running.broker.signer.key_id).start()


def _degraded(
    config: Config, running: _Running, reason: str, retry_s: float, server: list[uvicorn.Server]
) -> ssl.SSLContext:
    """Production without a safety part: serve the reason over a temporary
    certificate, and retry in the background until the broker can start."""
    print(f"appliance: not serving ({reason}); retrying every {retry_s:g} s", flush=True)
    running.switch.app = unavailable_app(reason)
    temp = Path(tempfile.mkdtemp(prefix="appliance-tls-"))
    cert, key, fp = ensure_certificate(temp, [config.host, "localhost"])
    print(f"temporary TLS certificate while unavailable: {fp}", flush=True)

    def retry() -> None:
        while True:
            time.sleep(retry_s)
            why = running.start()
            if why is None:
                print("appliance: the broker can start now; restarting", flush=True)
                if server:
                    server[0].should_exit = True
                return
            running.switch.app = unavailable_app(why)

    threading.Thread(target=retry, daemon=True, name="broker-retry").start()
    return tls_context(str(cert), str(key))


def start_agent(config: Config, model: Path) -> subprocess.Popen[bytes]:
    """Development: run the model agent as a child process on the broker's
    agent socket (on the box it is its own service and user). It stops with
    the broker, even when the broker is killed."""
    print(f"starting the model agent ({model.name}) on {config.agent_socket_path}", flush=True)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "appliance.agent",
            "--socket",
            str(config.agent_socket_path),
            "--model",
            str(model),
        ],
        preexec_fn=die_with_parent,
    )
