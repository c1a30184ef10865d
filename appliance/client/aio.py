"""The asynchronous client: each operation of ``calls.py`` driven with
httpx's async client (the MCP server uses it; so can any asyncio program)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, TypeVar

import httpx

from appliance.client.calls import BoxCore, Call, OnUpdate, Op, Pause, Reply, Retry, reply_from
from appliance.client.models import Approval, AuditPage, Health, Paired, Plan, Share, Task
from appliance.client.pinning import verify_for
from appliance.client.sync import transport_error

T = TypeVar("T")


class AsyncApplianceClient(BoxCore):
    """The same as :class:`ApplianceClient`, awaitable. The certificate pin
    is checked at the first call (fetching a certificate blocks, so it runs
    in a thread); ``transport`` (e.g. ``httpx.ASGITransport``) skips it."""

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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            url,
            credential,
            fingerprint=fingerprint,
            certificate_pem=certificate_pem,
            pins=pins,
            retry=retry,
        )
        self._timeout = timeout
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._opening = asyncio.Lock()

    async def _client(self) -> httpx.AsyncClient:
        async with self._opening:
            if self._http is None:
                verify: Any = True
                if self._transport is None:
                    verify, self.certificate_pem = await asyncio.to_thread(
                        verify_for, self.url, self.fingerprint, self.certificate_pem
                    )
                self._http = httpx.AsyncClient(
                    base_url=self.url,
                    timeout=self._timeout,
                    verify=verify,
                    transport=self._transport,
                )
            return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> AsyncApplianceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the driver ---------------------------------------------------------------
    async def _send(self, call: Call) -> Reply:
        http = await self._client()
        try:
            r = await http.request(
                call.method,
                call.path,
                params=call.params,
                json=call.json,
                headers=self.headers_for(call),
            )
        except httpx.TransportError as e:
            raise transport_error(self.url, e) from None
        return reply_from(r.status_code, r.text, r.headers)

    async def _run(self, op: Op[T]) -> T:
        try:
            step = next(op)
            while True:
                if isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                    step = op.send(None)
                else:
                    step = op.send(await self._send(step))
        except StopIteration as done:
            return done.value

    # -- the contract (see BoxCore for what each does) ------------------------------
    async def health(self) -> Health:
        return await self._run(self.op_health())

    async def pair(
        self,
        name: str,
        *,
        grant: dict[str, Any] | None = None,
        timeout: float = 180.0,
        on_code: OnUpdate = None,
    ) -> Paired:
        return await self._run(self.op_pair(name, timeout, on_code, grant))

    async def keys(self) -> dict[str, Any]:
        return await self._run(self.op_keys())

    async def pin_device(self) -> dict[str, Any]:
        return await self._run(self.op_pin_device())

    async def verify_keys(self) -> list[str]:
        return await self._run(self.op_verify_keys())

    async def verify_attestation(self) -> list[str]:
        return await self._run(self.op_verify_attestation())

    async def shares(self) -> list[Share]:
        return await self._run(self.op_shares())

    async def submit(self, intents: Iterable[Any]) -> Plan:
        return await self._run(self.op_submit(intents))

    async def plan(self, plan_id: str, wait: float = 0) -> Plan:
        return await self._run(self.op_plan(plan_id, wait))

    async def wait_plan(
        self, plan_id: str, timeout: float = 300.0, on_update: OnUpdate = None
    ) -> Plan:
        return await self._run(self.op_wait_plan(plan_id, timeout, on_update))

    async def undo(self, action_id: str) -> Plan:
        return await self._run(self.op_undo_action(action_id))

    async def undo_plan(self, plan_id: str) -> Plan:
        return await self._run(self.op_undo_plan(plan_id))

    async def action(self, action_id: str) -> dict[str, Any]:
        return await self._run(self.op_action(action_id))

    async def approvals(self) -> dict[str, Any]:
        return await self._run(self.op_approvals())

    async def approval(self, approval_id: str, wait: float = 0) -> Approval:
        return await self._run(self.op_approval(approval_id, wait))

    async def wait_approval(self, approval_id: str, timeout: float = 300.0) -> Approval:
        return await self._run(self.op_wait_approval(approval_id, timeout))

    async def task(self, text: str, from_content: dict[str, str] | None = None) -> Task:
        return await self._run(self.op_task(text, from_content))

    async def task_status(self, task_id: str, wait: float = 0) -> Task:
        return await self._run(self.op_task_status(task_id, wait))

    async def wait_task(
        self,
        task_id: str,
        timeout: float = 300.0,
        *,
        until_planned: bool = False,
        on_update: OnUpdate = None,
    ) -> Task:
        return await self._run(self.op_wait_task(task_id, timeout, until_planned, on_update))

    async def audit(self, start: int = 0, limit: int = 100) -> AuditPage:
        return await self._run(self.op_audit(start, limit))

    async def recent(self, limit: int = 20) -> AuditPage:
        return await self._run(self.op_recent(limit))

    async def checkpoint(self) -> dict[str, Any]:
        return await self._run(self.op_checkpoint())

    async def schema(self) -> dict[str, Any]:
        return await self._run(self.op_schema())

    async def plugins(self) -> list[dict[str, Any]]:
        return await self._run(self.op_plugins())

    async def run_plugin(self, name: str, verb: str, value: Any = None) -> dict[str, Any]:
        return await self._run(self.op_run_plugin(name, verb, value))
