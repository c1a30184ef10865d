"""Signing the console in (a pairing with an owner grant, approved by the
press) and out (its pairing revoked)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from appliance.api.deps import caller_ip, get_broker, get_limiter
from appliance.broker.grants import READ_WRITE
from appliance.console.render import page
from appliance.console.sessions import ConsoleSessions, CsrfRefused, SignIn, same
from appliance.errors import ApplianceError

router = APIRouter(include_in_schema=False)
FORM_BYTES = 16 * 1024  # a console form is a few fields


def sessions_of(request: Request) -> ConsoleSessions:
    sessions: ConsoleSessions = request.app.state.sessions
    return sessions


async def form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body, one value per field."""
    body = await request.body()
    if len(body) > FORM_BYTES:
        raise ApplianceError("the form is too large", code="body_too_large", status=413)
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def console_grant(request: Request) -> dict[str, Any]:
    """What the console asks for: the owner (everyone's records, undo of
    anyone's action), every share, for as long as a session lasts."""
    broker = get_broker(request)
    return {
        "shares": {share: READ_WRITE for share in sorted(broker.config.shares)},
        "audit": True,
        "owner": True,
        "expires_in_s": int(broker.config.console.session_s),
    }


def _finish(request: Request, token: str, state: SignIn) -> Response | None:
    """Once the press approved the pairing: the session cookie, and on to Now."""
    if state.secret is None:
        return None
    broker, sessions = get_broker(request), sessions_of(request)
    try:
        out = broker.pairing.result(state.secret)
    except ApplianceError as e:
        state.secret, state.refused = None, e.reason
        return None
    if "credential" not in out:
        if out["status"] not in ("pending", "waiting"):
            state.secret = None
            state.refused = f"the box did not approve this console ({out['status']})"
        return None
    # The credential stays here, unused and unkept: the browser gets a session.
    expires = out["grant"]["expires"]
    session_token, session = sessions.create(out["client_id"], expires)
    sessions.forget_sign_in(token)
    response = RedirectResponse("/", status_code=303)
    sessions.set_cookie(response, session_token, session)
    response.delete_cookie(
        sessions.sign_in_cookie, path="/", secure=sessions.secure, httponly=True, samesite="strict"
    )
    return response


@router.get("/pair")
def pair_page(request: Request) -> Response:
    get_limiter(request).take(f"ip:{caller_ip(request)}")
    sessions = sessions_of(request)
    if sessions.get(request.cookies.get(sessions.cookie)) is not None:
        return RedirectResponse("/", status_code=303)
    token, state, new = sessions.sign_in(request)
    done = _finish(request, token, state)
    if done is not None:
        return done
    broker = get_broker(request)
    response = page(
        request,
        "pair.html",
        title="Sign in",
        state=state,
        csrf=state.csrf,
        physical=not broker.panel.virtual,
        grant=console_grant(request),
        dev=broker.config.dev,
        nav=None,
    )
    if new:
        sessions.set_sign_in_cookie(response, token)
    return response


@router.get("/pair/status")
def pair_status(request: Request) -> Response:
    """For the sign-in page's script: pending, approved (the cookie is set
    on this answer), or refused."""
    found = sessions_of(request).signing_in(request)
    if found is None:
        return JSONResponse({"status": "none"})
    token, state = found
    done = _finish(request, token, state)
    if done is not None:
        response = JSONResponse({"status": "approved"})
        for key, value in done.raw_headers:
            if key == b"set-cookie":
                response.raw_headers.append((key, value))
        return response
    if state.refused:
        return JSONResponse({"status": "refused", "reason": state.refused})
    return JSONResponse({"status": "pending" if state.secret else "none", "code": state.code})


@router.post("/pair")
async def pair(request: Request) -> Response:
    get_limiter(request).take(f"ip:{caller_ip(request)}")
    fields = await form(request)
    found = sessions_of(request).signing_in(request)
    if found is None or not same(fields.get("csrf"), found[1].csrf):
        raise CsrfRefused("refused: the sign-in form's CSRF token is missing or wrong; reload")
    state = found[1]
    if state.secret is None:
        try:
            out = get_broker(request).pairing.request(
                fields.get("name", "").strip() or "console",
                caller_ip(request),
                console_grant(request),
                console=True,
            )
        except ApplianceError as e:
            state.refused = e.reason
        else:
            state.secret, state.code, state.refused = out["pairing_id"], out["code"], None
            state.approval_id = out["approval_id"]
    return RedirectResponse("/pair", status_code=303)


@router.post("/signout")
async def sign_out(request: Request) -> Response:
    """End the session and revoke the console's pairing with it."""
    sessions = sessions_of(request)
    fields = await form(request)
    sessions.check_csrf(request, fields.get("csrf"))
    session = sessions.end(request.cookies.get(sessions.cookie))
    if session is not None:
        get_broker(request).revoke_client(session.client_id)
    response = RedirectResponse("/pair", status_code=303)
    response.delete_cookie(
        sessions.cookie, path="/", secure=sessions.secure, httponly=True, samesite="strict"
    )
    return response
