"""The console's sessions: how a browser at the box's own page is signed in.

Signing in is pairing: the console asks, as any desktop does, for a grant —
but an **owner** grant (sees everyone's records, may undo anyone's action),
which nothing else may ask for — and the same physical press approves it,
the panel's summary saying "as the box's OWNER console". The credential the
pairing yields never leaves the box: the browser gets only a session cookie
(``HttpOnly``, ``Secure`` — plain HTTP on loopback only in development —,
``SameSite=Strict``, with the session's expiry), and the owner grant ends
when the session does.

* The cookie holds a random token; the database keeps only its SHA-256, so a
  copy of the database signs nobody in.
* Every form and every call that changes something carries the session's
  CSRF token (a form field, or the ``X-CSRF-Token`` header), compared in
  constant time; a browser's ``Sec-Fetch-Site: cross-site`` is refused too.
* Before the press, a browser holds a short *sign-in* cookie that ties its
  pairing (whose secret stays on the box) to it, with a CSRF token of its
  own: another page cannot start or finish a sign-in for it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import Request
from starlette.responses import Response

from appliance.broker.service import Broker
from appliance.db import Database
from appliance.errors import ApplianceError, Unauthorized

SCHEMA = """
CREATE TABLE IF NOT EXISTS console_sessions (
    token_sha256 TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
"""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SIGN_IN_S = 600.0  # how long a sign-in (a pairing waiting for its press) is kept
SIGN_INS = 256  # sign-ins kept at once (the oldest idle ones go first)


class SignInFirst(Unauthorized):
    """No session, or it ended: pages send the browser to sign in."""

    code = "console_session"


class CsrfRefused(ApplianceError):
    status = 403
    code = "csrf"


@dataclass
class Session:
    client_id: str
    csrf: str
    expires: float


@dataclass
class SignIn:
    """A browser signing in: its CSRF token and, once asked, its pairing."""

    csrf: str
    created: float
    secret: str | None = None  # the pairing's secret: never sent to the browser
    code: str | None = None
    approval_id: str | None = None
    refused: str | None = None


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str | None, b: str) -> bool:
    return isinstance(a, str) and hmac.compare_digest(a.encode(), b.encode())


class ConsoleSessions:
    """Sessions in the database, sign-ins in memory. ``secure``: the box
    speaks TLS (cookies are ``Secure`` and ``__Host-`` named)."""

    def __init__(
        self, broker: Broker, *, secure: bool, clock: Callable[[], float] = time.time
    ) -> None:
        self.broker = broker
        self.db: Database = broker.db
        self.secure = secure
        self.clock = clock
        self.cookie = "__Host-console" if secure else "console"
        self.sign_in_cookie = "__Host-console-sign-in" if secure else "console-sign-in"
        self.db.ensure(SCHEMA)
        self._lock = threading.Lock()
        self._sign_ins: OrderedDict[str, SignIn] = OrderedDict()

    # -- sessions ------------------------------------------------------------

    def create(self, client_id: str, expires: float) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(client_id, secrets.token_urlsafe(24), expires)
        # Sessions past their end go as a new one starts: the table stays small.
        self.db.execute("DELETE FROM console_sessions WHERE expires <= ?", (self.clock(),))
        self.db.execute(
            "INSERT INTO console_sessions (token_sha256, client_id, csrf, created, expires)"
            " VALUES (?, ?, ?, ?, ?)",
            (_sha(token), client_id, session.csrf, self.clock(), expires),
        )
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session behind ``token``: not over, its console still paired."""
        if not token:
            return None
        row = self.db.one("SELECT * FROM console_sessions WHERE token_sha256 = ?", (_sha(token),))
        if row is None:
            return None
        if (
            row["expires"] <= self.clock()
            or self.broker.evaluator.requester(row["client_id"]) is None
        ):
            self.db.execute("DELETE FROM console_sessions WHERE token_sha256 = ?", (_sha(token),))
            return None
        return Session(row["client_id"], row["csrf"], row["expires"])

    def end(self, token: str | None) -> Session | None:
        session = self.get(token)
        if token:
            self.db.execute("DELETE FROM console_sessions WHERE token_sha256 = ?", (_sha(token),))
        return session

    def session(self, request: Request) -> Session:
        """The request's session, or SignInFirst; a request that changes
        something must carry its CSRF token (form field ``csrf`` checked by
        the caller, or the ``X-CSRF-Token`` header)."""
        session = self.get(request.cookies.get(self.cookie))
        if session is None:
            raise SignInFirst("sign in to the box's console first (it takes a press on the box)")
        return session

    def check_csrf(self, request: Request, token: str | None) -> None:
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise CsrfRefused("refused: this request came from another site")
        session = self.session(request)
        if not same(token, session.csrf):
            raise CsrfRefused("refused: the form's CSRF token is missing or wrong; reload the page")

    def client_of(self, request: Request) -> str | None:
        """For the API (``deps.Sessions``): the console's client id when the
        request carries the session cookie; unsafe methods need the
        ``X-CSRF-Token`` header."""
        if self.cookie not in request.cookies:
            return None
        session = self.session(request)
        if request.method not in SAFE_METHODS:
            self.check_csrf(request, request.headers.get("x-csrf-token"))
        return session.client_id

    def set_cookie(self, response: Response, token: str, session: Session) -> None:
        response.set_cookie(
            self.cookie,
            token,
            max_age=max(1, int(session.expires - self.clock())),
            expires=datetime.fromtimestamp(session.expires, UTC),
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    # -- signing in ------------------------------------------------------------

    def signing_in(self, request: Request) -> tuple[str, SignIn] | None:
        """The browser's sign-in, if it has one."""
        token = request.cookies.get(self.sign_in_cookie)
        now = self.clock()
        with self._lock:
            for old in [t for t, s in self._sign_ins.items() if now - s.created > SIGN_IN_S]:
                del self._sign_ins[old]
            state = self._sign_ins.get(token or "")
            return (token, state) if token and state is not None else None

    def sign_in(self, request: Request) -> tuple[str, SignIn, bool]:
        """The browser's sign-in (token, state, new?); a new one if it has none."""
        found = self.signing_in(request)
        if found is not None:
            return (*found, False)
        token = secrets.token_urlsafe(32)
        state = SignIn(csrf=secrets.token_urlsafe(24), created=self.clock())
        with self._lock:
            self._sign_ins[token] = state
            while len(self._sign_ins) > SIGN_INS:
                # Those waiting for a press go last: a flood of page loads
                # cannot push a pending sign-in out.
                idle = next((t for t, s in self._sign_ins.items() if s.secret is None), None)
                self._sign_ins.pop(idle if idle is not None else next(iter(self._sign_ins)))
        return token, state, True

    def forget_sign_in(self, token: str | None) -> None:
        with self._lock:
            self._sign_ins.pop(token or "", None)

    def set_sign_in_cookie(self, response: Response, token: str) -> None:
        response.set_cookie(
            self.sign_in_cookie,
            token,
            max_age=int(SIGN_IN_S),
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )
