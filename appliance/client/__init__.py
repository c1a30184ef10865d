"""``appliance.client``: the public library for desktop programs.

A desktop program (a script, an agent framework, the ``appliance`` CLI, the
MCP server ``appliance mcp``) talks to its box through this module only::

    from appliance.client import ApplianceClient

    with ApplianceClient.from_file() as box:          # the pairing `appliance pair` saved
        plan = box.submit([{"verb": "file.mkdir", "resource": "share:docs/2024"}])
        if plan.waiting_for_press:
            print(plan.press_sentence())              # "press the button on the box; ..."
            plan = box.wait_plan(plan.plan_id)
        print(plan.status)                            # done | denied | expired | failed

``AsyncApplianceClient`` is the same, awaitable. What both promise:

* **Pinned TLS**: the box's self-signed certificate is trusted only if its
  SHA-256 fingerprint is the pinned one; nothing else is ever trusted
  (``NotTheBox`` otherwise). Pairing also pins the box's device key (and on
  a TPM box its attestation key); ``verify_keys()`` checks them again.
* **Typed results** (``models.py``) that keep the box's JSON in ``raw``.
* **Retries**: a 429 or 503 (rate limit, full approval queue, TPM or policy
  unavailable: refused before anything was done) is retried with
  exponential backoff, honouring ``Retry-After``; a lockout is not.
* **Waiting**: ``wait_plan``, ``wait_approval`` and ``wait_task`` long-poll
  the box until the press (or its timeout) decided.
* **A negotiated contract**: the first call reads ``/healthz``
  (``api_versions``) and uses the highest LAN API version both sides speak
  (``Incompatible`` if none).

Errors: ``ClientError`` is the box's refusal (``status``, ``code``,
``reason``); ``Unreachable``, ``NotTheBox``, ``Incompatible`` and
``NotPaired`` are what this side found. A plan the policy denied is not an
error: it comes back as a ``Plan`` with ``status == "denied"`` and its
``reasons``.
"""

from appliance.client.aio import AsyncApplianceClient
from appliance.client.calls import Retry
from appliance.client.errors import (
    ClientError,
    Incompatible,
    NotPaired,
    NotTheBox,
    Unreachable,
)
from appliance.client.models import (
    Action,
    Approval,
    AuditPage,
    Health,
    Paired,
    Plan,
    Share,
    Task,
    press_sentence,
)
from appliance.client.pinning import DEFAULT_CREDENTIALS, Credentials
from appliance.client.sync import ApplianceClient

__all__ = [
    "DEFAULT_CREDENTIALS",
    "Action",
    "ApplianceClient",
    "Approval",
    "AsyncApplianceClient",
    "AuditPage",
    "ClientError",
    "Credentials",
    "Health",
    "Incompatible",
    "NotPaired",
    "NotTheBox",
    "Paired",
    "Plan",
    "Retry",
    "Share",
    "Task",
    "Unreachable",
    "press_sentence",
]
