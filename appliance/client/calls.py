"""Every call of the LAN contract, written once for both clients.

Each operation is a generator: it yields the HTTP calls it needs (``Call``)
and the pauses between them (``Pause``), and is sent each call's answer
(``Reply``). The synchronous client (``sync.py``) drives it with httpx and
``time.sleep``, the asynchronous one (``aio.py``) with httpx's async client
and ``asyncio.sleep``; what to ask, when to retry and how to wait is here
only. Retries: 429 and 503 are answered before anything was done (rate
limit, full approval queue, TPM or policy unavailable), so the call is
repeated with exponential backoff (honouring ``Retry-After``); a lockout is
not retried, it lasts minutes.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from appliance.api.contract import API_VERSIONS
from appliance.client.errors import ClientError, Incompatible, NotTheBox
from appliance.client.models import (
    Approval,
    AuditPage,
    Health,
    Paired,
    Plan,
    Share,
    Task,
)
from appliance.client.pinning import DEFAULT_CREDENTIALS, Credentials

T = TypeVar("T")

MAX_WAIT_S = 30.0  # one long poll (the box allows 60)
NOT_RETRIED = frozenset({"locked_out"})


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    auth: bool = True
    plan: bool = False  # a 403 carrying a plan is a denied plan, not an error


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    retry_after: float | None = None

    @property
    def code(self) -> str:
        return str(self.body.get("code", ""))


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Retry:
    """How often and how patiently 429 and 503 are retried."""

    attempts: int = 4
    base_s: float = 0.5
    cap_s: float = 8.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.cap_s, self.base_s * (2**attempt))
        return min(60.0, max(backoff, retry_after or 0.0))


Op = Generator[Call | Pause, Reply | None, T]
OnUpdate = Callable[[Any], None] | None


def negotiate(health: Health, ours: Iterable[int] = API_VERSIONS) -> int:
    """The highest contract version both sides speak."""
    common = set(ours) & set(health.api_versions)
    if not common:
        older = "box" if max(ours) > max(health.api_versions, default=0) else "client"
        raise Incompatible(
            f"the box speaks LAN API version(s) {sorted(health.api_versions)}, this client "
            f"{sorted(ours)}: update the {older}"
        )
    return max(common)


def carries_plan(reply: Reply) -> bool:
    """A 403 that answers with the denied plan itself (its reasons are in it)."""
    return "plan_id" in reply.body or isinstance(reply.body.get("plan"), dict)


def plain_intents(intents: Iterable[Any]) -> list[dict[str, Any]]:
    """Intents as JSON: dicts as given, models (``appliance.intents.Intent``) dumped."""
    out = []
    for i in intents:
        dump = getattr(i, "model_dump", None)
        out.append(dump(mode="json", exclude_defaults=True) if dump else dict(i))
    return out


class BoxCore:
    """The state both clients share (where the box is, what is pinned, the
    negotiated contract version) and the operations (``op_*``) as generators."""

    def __init__(
        self,
        url: str,
        credential: str | None = None,
        *,
        fingerprint: str | None = None,
        certificate_pem: str | None = None,
        pins: dict[str, Any] | None = None,
        retry: Retry | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.credential = credential
        self.fingerprint = fingerprint
        self.certificate_pem = certificate_pem
        self.pins: dict[str, Any] = dict(pins or {})
        self.retry = retry or Retry()
        self.api_version: int | None = None

    @classmethod
    def from_credentials(cls, creds: Credentials, **kw: Any) -> Self:
        return cls(
            creds.url,
            creds.credential,
            fingerprint=creds.fingerprint,
            certificate_pem=creds.certificate_pem,
            pins=creds.pins,
            **kw,
        )

    @classmethod
    def from_file(cls, path: Path = DEFAULT_CREDENTIALS, **kw: Any) -> Self:
        """The box this desktop paired with (``appliance pair`` wrote the file)."""
        return cls.from_credentials(Credentials.load(path), **kw)

    def credentials(self, name: str | None = None) -> Credentials:
        return Credentials(
            url=self.url,
            credential=self.credential,
            fingerprint=self.fingerprint,
            certificate_pem=self.certificate_pem,
            pins=dict(self.pins),
            name=name,
        )

    def save(self, path: Path = DEFAULT_CREDENTIALS, name: str | None = None) -> None:
        """Keep the credential and what was pinned (0600)."""
        self.credentials(name).save(path)

    # -- the one place a call is made and judged ---------------------------------
    def request(self, call: Call) -> Op[Reply]:
        attempt = 0
        while True:
            reply = yield call
            assert reply is not None
            if reply.status < 400 or (call.plan and reply.status == 403 and carries_plan(reply)):
                return reply
            if (
                reply.status in (429, 503)
                and reply.code not in NOT_RETRIED
                and attempt + 1 < self.retry.attempts
            ):
                yield Pause(self.retry.delay(attempt, reply.retry_after))
                attempt += 1
                continue
            raise ClientError(reply.status, reply.body)

    def ready(self) -> Op[None]:
        """Negotiate the contract version once, from ``/healthz``."""
        if self.api_version is None:
            self.api_version = negotiate((yield from self.op_health()))

    def get(self, path: str, **params: Any) -> Op[dict[str, Any]]:
        yield from self.ready()
        return (yield from self.request(Call("GET", path, params=params or None))).body

    def post(self, path: str, body: Any = None, *, plan: bool = False) -> Op[dict[str, Any]]:
        yield from self.ready()
        return (yield from self.request(Call("POST", path, json=body, plan=plan))).body

    # -- health and pairing --------------------------------------------------------
    def op_health(self) -> Op[Health]:
        # 503 still carries the health (it says why nothing privileged can run).
        reply = yield Call("GET", "/healthz", auth=False)
        assert reply is not None
        if reply.status >= 400 and "status" not in reply.body:
            raise ClientError(reply.status, reply.body)
        return Health.from_json(reply.body)

    def op_pair(
        self, name: str, timeout: float, on_code: OnUpdate, grant: dict[str, Any] | None = None
    ) -> Op[Paired]:
        """Ask to pair for ``grant`` (default: read every share); wait for the press."""
        yield from self.ready()
        body = {"name": name, "grant": grant}
        started = (
            yield from self.request(Call("POST", "/v1/pairings", json=body, auth=False))
        ).body
        if on_code:
            on_code(started["code"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = (
                yield from self.request(
                    Call("GET", f"/v1/pairings/{started['pairing_id']}", auth=False)
                )
            ).body
            if "credential" in out:
                self.credential = str(out["credential"])
                return Paired(str(out["client_id"]), self.credential, str(started["code"]), out)
            status = out.get("status")
            if status not in ("pending", None):
                raise ClientError(
                    403, {"code": f"pairing_{status}", "reason": f"the pairing was {status}"}
                )
            yield Pause(0.5)
        raise TimeoutError("nobody approved the pairing on the box in time")

    # -- the box's keys ------------------------------------------------------------
    def op_keys(self) -> Op[dict[str, Any]]:
        return (yield from self.get("/v1/keys"))

    def op_pin_device(self) -> Op[dict[str, Any]]:
        """Right after pairing: remember the device key (trust on first use),
        check its boot statement, and on a TPM box its attestation."""
        keys = yield from self.op_keys()
        self.pins["device_key_pem"] = keys["device_key"]["pem"]
        self.pins["device_key_id"] = keys["device_key"].get("kid")
        self.pins["epoch"] = keys["statement"]["epoch"]
        self.check_keys(keys)
        if not keys["unsafe"]:
            yield from self.op_verify_attestation()
        return keys

    def op_verify_keys(self) -> Op[list[str]]:
        return self.check_keys((yield from self.op_keys()))

    def check_keys(self, keys: dict[str, Any]) -> list[str]:
        """Follow the chain from the pinned device key to this start's token
        root (raises NotTheBox, or TokenError for a forged or old statement)."""
        from appliance.issuer.statement import verify_statement

        pinned = self.pins.get("device_key_pem")
        if not pinned:
            raise NotTheBox("no device key pinned: pair again")
        if keys["device_key"]["pem"] != pinned:
            raise NotTheBox(
                "the box answers with another device key than the one pinned at pairing: "
                "this is not the box you paired with"
            )
        verified = verify_statement(
            keys["statement"], pinned.encode(), current_epoch=self.pins.get("epoch", 0)
        )
        root = base64.b64decode(keys["token_root"]["public_key"])
        if root != verified.root_public:
            raise NotTheBox("the token root the box serves is not the one its statement names")
        self.pins["epoch"] = verified.epoch
        return [
            f"the boot statement is signed by the device key {verified.device_key_id} "
            "pinned at pairing",
            f"it vouches for this start's token root until {verified.not_after} (unix time), "
            f"epoch {verified.epoch} (not older than any seen before)",
        ]

    def op_verify_attestation(self) -> Op[list[str]]:
        """A TPM quote and certification of the device key with a fresh nonce,
        checked against the keys pinned at pairing."""
        from appliance.issuer.attestation import verify_certify, verify_quote

        nonce = os.urandom(16)
        answer = yield from self.get("/v1/attestation", nonce=nonce.hex())
        ak = self.pins.setdefault("ak_pem", answer["ak_pem"])
        if answer["ak_pem"] != ak:
            raise NotTheBox("the box's attestation key is not the one pinned at pairing")
        device = str(self.pins["device_key_pem"]).encode()
        quote = verify_quote(answer["quote"], nonce, ak.encode())
        cert = verify_certify(answer["certify"], nonce, ak.encode(), device)
        problems = quote.problems + cert.problems
        if problems:
            raise NotTheBox("attestation failed: " + "; ".join(problems))
        return quote.proved + cert.proved

    # -- files and plans -----------------------------------------------------------
    def op_shares(self) -> Op[list[Share]]:
        body = yield from self.get("/v1/shares")
        return [Share.from_json(s) for s in body.get("shares", [])]

    def op_submit(self, intents: Iterable[Any]) -> Op[Plan]:
        body = yield from self.post("/v1/intents", {"intents": plain_intents(intents)}, plan=True)
        return Plan.from_json(body)

    def op_plan(self, plan_id: str, wait: float = 0) -> Op[Plan]:
        return Plan.from_json((yield from self.get(f"/v1/plans/{plan_id}", wait=wait)))

    def op_wait_plan(self, plan_id: str, timeout: float, on_update: OnUpdate) -> Op[Plan]:
        """The plan once it finished, or as it is when ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            plan = yield from self.op_plan(plan_id, wait=min(MAX_WAIT_S, left))
            if on_update:
                on_update(plan)
            if plan.finished or time.monotonic() >= deadline:
                return plan

    def op_undo_action(self, action_id: str) -> Op[Plan]:
        return Plan.from_json((yield from self.post(f"/v1/actions/{action_id}/undo", plan=True)))

    def op_undo_plan(self, plan_id: str) -> Op[Plan]:
        return Plan.from_json((yield from self.post(f"/v1/plans/{plan_id}/undo", plan=True)))

    def op_action(self, action_id: str) -> Op[dict[str, Any]]:
        return (yield from self.get(f"/v1/actions/{action_id}"))

    # -- approvals -----------------------------------------------------------------
    def op_approvals(self) -> Op[dict[str, Any]]:
        return (yield from self.get("/v1/approvals"))

    def op_approval(self, approval_id: str, wait: float = 0) -> Op[Approval]:
        return Approval.from_json((yield from self.get(f"/v1/approvals/{approval_id}", wait=wait)))

    def op_wait_approval(self, approval_id: str, timeout: float) -> Op[Approval]:
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            approval = yield from self.op_approval(approval_id, wait=min(MAX_WAIT_S, left))
            if approval.finished or time.monotonic() >= deadline:
                return approval

    # -- tasks in plain words ------------------------------------------------------
    def op_task(self, text: str, from_content: dict[str, str] | None) -> Op[Task]:
        body: dict[str, Any] = {"text": text}
        if from_content:
            body["from_content"] = from_content
        return Task.from_json((yield from self.post("/v1/tasks", body)))

    def op_task_status(self, task_id: str, wait: float = 0) -> Op[Task]:
        return Task.from_json((yield from self.get(f"/v1/tasks/{task_id}", wait=wait)))

    def op_wait_task(
        self, task_id: str, timeout: float, until_planned: bool, on_update: OnUpdate
    ) -> Op[Task]:
        """The task once it finished (or, ``until_planned``, once the model
        answered), or as it is when ``timeout`` runs out. ``on_update`` sees
        each new state; short polls while the model plans, so its events
        show as they happen."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            task = yield from self.op_task_status(task_id, wait=min(1.0, left))
            if on_update:
                on_update(task)
            if task.finished or (until_planned and task.planned):
                return task
            if time.monotonic() >= deadline:
                return task
            if task.plan is not None:  # the model is done: wait for the plan itself
                yield from self.op_plan(task.plan.plan_id, wait=min(MAX_WAIT_S, left))

    # -- what the box did ----------------------------------------------------------
    def op_audit(self, start: int = 0, limit: int = 100) -> Op[AuditPage]:
        body = yield from self.get("/v1/audit", start=start, limit=limit)
        return AuditPage.from_json(body, start)

    def op_recent(self, limit: int = 20) -> Op[AuditPage]:
        """The newest ``limit`` entries of the audit log (that this client may see)."""
        size = (yield from self.op_audit(0, 1)).size
        start = max(0, size - limit)
        return (yield from self.op_audit(start, max(1, limit)))

    def op_checkpoint(self) -> Op[dict[str, Any]]:
        return (yield from self.get("/v1/audit/checkpoint"))

    def op_schema(self) -> Op[dict[str, Any]]:
        return (yield from self.get("/v1/intents/schema"))

    def op_plugins(self) -> Op[list[dict[str, Any]]]:
        return list((yield from self.get("/v1/plugins")).get("plugins", []))

    def op_run_plugin(self, name: str, verb: str, value: Any = None) -> Op[dict[str, Any]]:
        body = {"verb": verb, "input": value}
        return (yield from self.post(f"/v1/plugins/{name}/run", body, plan=True))

    # -- for the drivers -----------------------------------------------------------
    def headers_for(self, call: Call) -> dict[str, str]:
        if call.auth and self.credential:
            return {"Authorization": f"Bearer {self.credential}"}
        return {}


def reply_from(status: int, text: str, headers: Mapping[str, str]) -> Reply:
    """An HTTP answer as a Reply: its JSON body (or the reason it has none)."""
    import json

    try:
        body = json.loads(text) if text else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"code": "bad_response", "reason": f"the box answered {status}: {text[:200]!r}"}
    retry_after = headers.get("retry-after")
    try:
        wait = float(retry_after) if retry_after else None
    except ValueError:
        wait = None
    return Reply(status, body, wait)
