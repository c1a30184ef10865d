"""The synchronous client: each operation of ``calls.py`` driven with httpx."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, TypeVar

import httpx

from appliance.client.calls import BoxCore, Call, OnUpdate, Op, Pause, Reply, Retry, reply_from
from appliance.client.errors import NotTheBox, Unreachable
from appliance.client.models import Approval, AuditPage, Health, Paired, Plan, Share, Task
from appliance.client.pinning import verify_for

T = TypeVar("T")


def transport_error(url: str, e: Exception) -> Exception:
    """A connection that failed, as the reason a person can act on."""
    if "CERTIFICATE_VERIFY_FAILED" in str(e):
        return NotTheBox(
            f"{url} presented another certificate than the one pinned: "
            "this is not the box you paired with (or it was reset: pair again)"
        )
    return Unreachable(f"cannot reach the box at {url}: {e or type(e).__name__}")


class ApplianceClient(BoxCore):
    """A paired desktop's handle on its box (or an unpaired one's, to pair).

    ``url``: the box's LAN API (``https://box.local:8443``). ``fingerprint``:
    the SHA-256 of its certificate, pinned; ``certificate_pem``: the pinned
    certificate itself (kept at pairing; without it, it is fetched and
    checked against the fingerprint now). ``retry``: how 429/503 are
    retried. ``transport``: an httpx transport (tests, an in-process box)."""

    def __init__(
        self,
        url: str,
        credential: str | None = None,
        *,
        fingerprint: str | None = None,
        certificate_pem: str | None = None,
        timeout: float = 90.0,
        retry: Retry | None = None,
        pins: dict[str, Any] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        verify: Any = True
        if transport is None:
            verify, certificate_pem = verify_for(url.rstrip("/"), fingerprint, certificate_pem)
        super().__init__(
            url,
            credential,
            fingerprint=fingerprint,
            certificate_pem=certificate_pem,
            pins=pins,
            retry=retry,
        )
        self.http = httpx.Client(
            base_url=self.url, timeout=timeout, verify=verify, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ApplianceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the driver ---------------------------------------------------------------
    def _send(self, call: Call) -> Reply:
        try:
            r = self.http.request(
                call.method,
                call.path,
                params=call.params,
                json=call.json,
                headers=self.headers_for(call),
            )
        except httpx.TransportError as e:
            raise transport_error(self.url, e) from None
        return reply_from(r.status_code, r.text, r.headers)

    def _run(self, op: Op[T]) -> T:
        try:
            step = next(op)
            while True:
                if isinstance(step, Pause):
                    time.sleep(step.seconds)
                    step = op.send(None)
                else:
                    step = op.send(self._send(step))
        except StopIteration as done:
            return done.value

    # -- the contract (see BoxCore for what each does) ------------------------------
    def health(self) -> Health:
        return self._run(self.op_health())

    def pair(
        self,
        name: str,
        *,
        grant: dict[str, Any] | None = None,
        timeout: float = 180.0,
        on_code: OnUpdate = None,
    ) -> Paired:
        return self._run(self.op_pair(name, timeout, on_code, grant))

    def keys(self) -> dict[str, Any]:
        return self._run(self.op_keys())

    def pin_device(self) -> dict[str, Any]:
        return self._run(self.op_pin_device())

    def verify_keys(self, keys: dict[str, Any] | None = None) -> list[str]:
        return self.check_keys(keys) if keys is not None else self._run(self.op_verify_keys())

    def verify_attestation(self) -> list[str]:
        return self._run(self.op_verify_attestation())

    def shares(self) -> list[Share]:
        return self._run(self.op_shares())

    def submit(self, intents: Iterable[Any]) -> Plan:
        return self._run(self.op_submit(intents))

    def plan(self, plan_id: str, wait: float = 0) -> Plan:
        return self._run(self.op_plan(plan_id, wait))

    def wait_plan(self, plan_id: str, timeout: float = 300.0, on_update: OnUpdate = None) -> Plan:
        return self._run(self.op_wait_plan(plan_id, timeout, on_update))

    def undo(self, action_id: str) -> Plan:
        return self._run(self.op_undo_action(action_id))

    def undo_plan(self, plan_id: str) -> Plan:
        return self._run(self.op_undo_plan(plan_id))

    def action(self, action_id: str) -> dict[str, Any]:
        return self._run(self.op_action(action_id))

    def approvals(self) -> dict[str, Any]:
        return self._run(self.op_approvals())

    def approval(self, approval_id: str, wait: float = 0) -> Approval:
        return self._run(self.op_approval(approval_id, wait))

    def wait_approval(self, approval_id: str, timeout: float = 300.0) -> Approval:
        return self._run(self.op_wait_approval(approval_id, timeout))

    def task(self, text: str, from_content: dict[str, str] | None = None) -> Task:
        return self._run(self.op_task(text, from_content))

    def task_status(self, task_id: str, wait: float = 0) -> Task:
        return self._run(self.op_task_status(task_id, wait))

    def wait_task(
        self,
        task_id: str,
        timeout: float = 300.0,
        *,
        until_planned: bool = False,
        on_update: OnUpdate = None,
    ) -> Task:
        return self._run(self.op_wait_task(task_id, timeout, until_planned, on_update))

    def audit(self, start: int = 0, limit: int = 100) -> AuditPage:
        return self._run(self.op_audit(start, limit))

    def recent(self, limit: int = 20) -> AuditPage:
        return self._run(self.op_recent(limit))

    def checkpoint(self) -> dict[str, Any]:
        return self._run(self.op_checkpoint())

    def schema(self) -> dict[str, Any]:
        return self._run(self.op_schema())

    def plugins(self) -> list[dict[str, Any]]:
        return self._run(self.op_plugins())

    def run_plugin(self, name: str, verb: str, value: Any = None) -> dict[str, Any]:
        return self._run(self.op_run_plugin(name, verb, value))
