"""The console's pages: Now, Queue, History, Audit, Clients, Plugins, Box.

Each page is rendered on the box from the same functions the LAN API
answers with (``appliance.api.routes``: the approval line, the review, the
plans and the audit log as the console's own client may see them, and the
owner-only routes), so nothing the console shows is computed twice. Forms
carry the session's CSRF token; every list is paged.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from appliance.api.deps import get_broker
from appliance.api.routes.owner import audit_check, audit_state, box, clients
from appliance.api.routes.review import approval_review, line
from appliance.console.render import page, static
from appliance.console.review import summary_line
from appliance.console.sessions import Session
from appliance.console.signin import form, sessions_of
from appliance.errors import ApplianceError

router = APIRouter(include_in_schema=False)
PER_PAGE = 20
PageNo = Annotated[int, Query(ge=1, le=100_000)]


def console_session(request: Request) -> Session:
    return sessions_of(request).session(request)


Sess = Annotated[Session, Depends(console_session)]


def show(request: Request, session: Session, template: str, nav: str, **values: Any) -> Response:
    broker = get_broker(request)
    return page(
        request,
        template,
        csrf=session.csrf,
        nav=nav,
        dev=broker.config.dev,
        me=session.client_id,
        session_expires=session.expires,
        **values,
    )


def pages(total: int, page_no: int, per: int = PER_PAGE) -> dict[str, Any]:
    last = max(1, -(-total // per))
    return {"no": page_no, "last": last, "total": total, "start": (page_no - 1) * per}


async def checked(request: Request) -> dict[str, str]:
    """A console form's fields, once its CSRF token is checked."""
    fields = await form(request)
    sessions_of(request).check_csrf(request, fields.get("csrf"))
    return fields


def failed(request: Request, session: Session, e: ApplianceError, back: str) -> Response:
    return show(request, session, "error.html", "", error=e, back=back, title="Refused")


# -- Now --------------------------------------------------------------------------


def now_values(request: Request, session: Session) -> dict[str, Any]:
    broker = get_broker(request)
    state = line(broker, session.client_id)
    shown = next((a for a in state["approvals"] if a["position"] == 0), None)
    return {
        "line": state,
        "shown": shown,
        "review": approval_review(broker, session.client_id, shown["approval_id"])
        if shown
        else None,
        "waiting": [a for a in state["approvals"] if a["position"]],
        "arming_delay_s": broker.config.approvals.arming_delay_s,
        "physical": not broker.panel.virtual,
    }


@router.get("/")
def now(request: Request, session: Sess) -> Response:
    return show(request, session, "now.html", "now", title="Now", **now_values(request, session))


@router.get("/now/fragment")
def now_fragment(request: Request, session: Sess) -> Response:
    """The Now page's content alone: the page's script swaps it in when the
    line changes (server-sent events), so the box renders every update."""
    return show(request, session, "_now.html", "now", **now_values(request, session))


# -- Queue --------------------------------------------------------------------------


@router.get("/queue")
def queue(request: Request, session: Sess, page_no: PageNo = 1) -> Response:
    broker = get_broker(request)
    approvals = line(broker, session.client_id)["approvals"]
    paging = pages(len(approvals), page_no)
    rows = []
    for a in approvals[paging["start"] : paging["start"] + PER_PAGE]:
        try:
            rows.append(
                (a, summary_line(approval_review(broker, session.client_id, a["approval_id"])))
            )
        except ApplianceError:
            continue  # decided and forgotten in between
    return show(request, session, "queue.html", "queue", title="Queue", rows=rows, paging=paging)


@router.get("/queue/{approval_id}")
def queued(approval_id: str, request: Request, session: Sess) -> Response:
    broker = get_broker(request)
    try:
        review = approval_review(broker, session.client_id, approval_id)
    except ApplianceError as e:
        return failed(request, session, e, "/queue")
    return show(request, session, "review.html", "queue", title="Request", review=review)


# -- History --------------------------------------------------------------------------


@router.get("/history")
def history(request: Request, session: Sess, page_no: PageNo = 1, reads: bool = False) -> Response:
    broker = get_broker(request)
    start = (page_no - 1) * PER_PAGE
    found = broker.views.plans_page(session.client_id, start, PER_PAGE, changes=not reads)
    names = {c["client_id"]: c["name"] for c in broker.clients.list()}
    return show(
        request,
        session,
        "history.html",
        "history",
        title="History",
        plans=found["plans"],
        paging=pages(found["total"], page_no),
        reads=reads,
        names=names,
    )


@router.post("/history/undo")
async def undo(request: Request, session: Sess) -> Response:
    """One click: a new plan that undoes the action (or every done action of
    the plan), waiting for the press like any other."""
    fields = await checked(request)
    broker = get_broker(request)
    try:
        if fields.get("action_id"):
            broker.submit_undo(session.client_id, fields["action_id"])
        else:
            broker.submit_plan_undo(session.client_id, fields.get("plan_id", ""))
    except ApplianceError as e:
        return failed(request, session, e, "/history")
    return RedirectResponse("/", status_code=303)


# -- Audit ------------------------------------------------------------------------------


@router.get("/audit")
def audit(
    request: Request,
    session: Sess,
    q: Annotated[str, Query(max_length=200)] = "",
    kind: Annotated[str, Query(max_length=64)] = "",
    before: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    broker = get_broker(request)
    found = broker.views.audit_search(
        session.client_id, q=q, kind=kind, before=before, limit=PER_PAGE
    )
    return show(
        request,
        session,
        "audit.html",
        "audit",
        title="Audit",
        found=found,
        q=q,
        kind=kind,
        before=before,
        state=audit_state(broker, audit_check(request)),
    )


@router.post("/audit/verify")
async def verify(request: Request, session: Sess) -> Response:
    await checked(request)
    audit_check(request).run(get_broker(request))
    return RedirectResponse("/audit", status_code=303)


@router.get("/audit/checkpoint")
def checkpoint(request: Request, session: Sess) -> Response:
    """The newest signed checkpoint, to keep on a desktop: a later check of
    the log (``appliance audit verify``) proves it only ever grew from here."""
    cp = get_broker(request).audit.latest_checkpoint()
    return JSONResponse(
        cp,
        headers={
            "content-disposition": f'attachment; filename="checkpoint-{cp["tree_size"]}.json"'
        },
    )


# -- Clients, lockouts --------------------------------------------------------------------


@router.get("/clients")
def clients_page(
    request: Request, session: Sess, page_no: PageNo = 1, everyone: bool = False
) -> Response:
    broker = get_broker(request)
    found = clients(broker, (page_no - 1) * PER_PAGE, PER_PAGE, everyone=everyone)
    return show(
        request,
        session,
        "clients.html",
        "clients",
        title="Clients",
        found=found,
        paging=pages(found["total"], page_no),
        everyone=everyone,
        lockouts=broker.approvals.lockouts(),
        names={c["client_id"]: c["name"] for c in broker.clients.list()},
    )


@router.post("/clients/revoke")
async def revoke(request: Request, session: Sess) -> Response:
    fields = await checked(request)
    try:
        get_broker(request).revoke_client(fields.get("client_id", ""))
    except ApplianceError as e:
        return failed(request, session, e, "/clients")
    return RedirectResponse("/clients", status_code=303)


@router.post("/lockouts/lift")
async def lift(request: Request, session: Sess) -> Response:
    fields = await checked(request)
    get_broker(request).approvals.lift_lockout(fields.get("requester", ""), by=session.client_id)
    return RedirectResponse("/clients", status_code=303)


# -- Plugins, Box ---------------------------------------------------------------------------


@router.get("/plugins")
def plugins(request: Request, session: Sess, page_no: PageNo = 1) -> Response:
    installed = get_broker(request).plugins.list()
    paging = pages(len(installed), page_no)
    return show(
        request,
        session,
        "plugins.html",
        "plugins",
        title="Plugins",
        plugins=installed[paging["start"] : paging["start"] + PER_PAGE],
        paging=paging,
    )


@router.get("/box")
def box_page(request: Request, session: Sess) -> Response:
    return show(request, session, "box.html", "box", title="Box", box=box(get_broker(request)))


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    return static(name)
