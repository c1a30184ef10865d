"""History: plans newest first, and the audit log searched newest first;
each as the caller may see it (its own, or everyone's with an ``audit``
grant or as the box's console)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from appliance.api.deps import BrokerDep, Client
from appliance.api.openapi import AUTHENTICATED, answers

router = APIRouter()


@router.get("/v1/plans", responses=answers(*AUTHENTICATED, 422))
def plans(
    client_id: Client,
    broker: BrokerDep,
    start: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    changes: bool = False,
) -> dict[str, Any]:
    """Plans newest first; ``changes``: only those that change something."""
    return broker.views.plans_page(client_id, start, limit, changes=changes)


@router.get("/v1/audit/search", responses=answers(*AUTHENTICATED, 422))
def search(
    client_id: Client,
    broker: BrokerDep,
    q: Annotated[str, Query(max_length=200)] = "",
    kind: Annotated[str, Query(max_length=64)] = "",
    before: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """Audit entries newest first, whose kind starts with ``kind`` and whose
    text contains ``q``; ``next_before`` is where the next page starts."""
    return broker.views.audit_search(client_id, q=q, kind=kind, before=before, limit=limit)
