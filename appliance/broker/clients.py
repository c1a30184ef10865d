"""Paired clients: pairing requests, credentials, revocation.

A desktop asks to pair; a person approves on the panel; the desktop then
fetches its credential exactly once. The box keeps only an HMAC of the
secret (keyed with a pepper from the key store), so a copy of the database
does not let anyone call the API.

A credential reads ``<client_id>.<secret>``: the id finds the row, the
secret is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from appliance.db import Database
from appliance.errors import ApplianceError, NotFound, Unauthorized
from appliance.names import check_client_name, shown

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hmac TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS pairings (
    pairing_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    approval_id TEXT,
    code TEXT,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    client_id TEXT,
    delivered INTEGER NOT NULL DEFAULT 0
);
"""


def check_name(name: object) -> str:
    """A desktop's name as a person will see it (appliance.names.check_client_name)."""
    if not isinstance(name, str):
        raise ApplianceError("name must be a string", code="invalid_request", status=422)
    try:
        return check_client_name(name)
    except ValueError as e:
        raise ApplianceError(str(e), code="invalid_request", status=422) from None


class Clients:
    def __init__(self, db: Database, pepper: bytes):
        self.db = db
        self._pepper = pepper
        db.ensure(SCHEMA)

    def _hmac(self, secret: str) -> str:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()

    # -- pairing ---------------------------------------------------------
    def new_pairing(self, name: str) -> str:
        pairing_id = "pair_" + secrets.token_hex(8)
        self.db.execute(
            "INSERT INTO pairings (pairing_id, name, status, created) VALUES (?, ?, 'pending', ?)",
            (pairing_id, check_name(name), time.time()),
        )
        return pairing_id

    def attach_approval(self, pairing_id: str, approval_id: str, code: str) -> None:
        self.db.execute(
            "UPDATE pairings SET approval_id = ?, code = ? WHERE pairing_id = ?",
            (approval_id, code, pairing_id),
        )

    def drop_pairing(self, pairing_id: str) -> None:
        self.db.execute("DELETE FROM pairings WHERE pairing_id = ?", (pairing_id,))

    def pairing(self, pairing_id: str) -> dict[str, Any]:
        row = self.db.one("SELECT * FROM pairings WHERE pairing_id = ?", (pairing_id,))
        if row is None:
            raise NotFound(f"no pairing {pairing_id!r}")
        return dict(row)

    def set_pairing_status(self, pairing_id: str, status: str) -> None:
        self.db.execute(
            "UPDATE pairings SET status = ? WHERE pairing_id = ? AND status = 'pending'",
            (status, pairing_id),
        )

    def deliver(self, pairing_id: str) -> dict[str, Any]:
        """The credential of an approved pairing, exactly once."""
        row = self.pairing(pairing_id)
        if row["status"] != "approved":
            return {"pairing_id": pairing_id, "status": row["status"], "code": row["code"]}
        secret = secrets.token_urlsafe(32)
        client_id = "cl_" + secrets.token_hex(8)
        with self.db.tx() as conn:
            taken = conn.execute(
                "UPDATE pairings SET delivered = 1, client_id = ? "
                "WHERE pairing_id = ? AND delivered = 0",
                (client_id, pairing_id),
            ).rowcount
            if not taken:
                raise ApplianceError(
                    "this pairing's credential was already delivered; pair again if it was lost",
                    code="already_delivered",
                    status=410,
                )
            conn.execute(
                "INSERT INTO clients (client_id, name, secret_hmac, created) VALUES (?, ?, ?, ?)",
                (client_id, row["name"], self._hmac(secret), time.time()),
            )
        return {"client_id": client_id, "credential": f"{client_id}.{secret}", "status": "approved"}

    # -- credentials -----------------------------------------------------
    def authenticate(self, credential: str) -> str:
        """The client id a bearer credential belongs to, or Unauthorized."""
        client_id, _, secret = credential.partition(".")
        row = self.db.one("SELECT * FROM clients WHERE client_id = ?", (client_id,))
        # Compare even when the row is missing, so timing does not tell ids apart.
        expected = row["secret_hmac"] if row else self._hmac("\0absent")
        if not hmac.compare_digest(expected, self._hmac(secret)) or row is None:
            raise Unauthorized("unknown credential: pair this desktop first")
        if row["revoked"] is not None:
            raise Unauthorized(f"client {client_id} was revoked; pair again", code="revoked")
        return client_id

    def display_name(self, client_id: str) -> str:
        """How a person is shown the client: its paired name and its id."""
        row = self.db.one("SELECT name FROM clients WHERE client_id = ?", (client_id,))
        return f"{shown(row['name'])} ({client_id})" if row else client_id

    def list(self) -> list[dict[str, Any]]:
        rows = self.db.all("SELECT client_id, name, created, revoked FROM clients ORDER BY created")
        return [dict(r) for r in rows]

    def revoke(self, client_id: str) -> None:
        cur = self.db.execute(
            "UPDATE clients SET revoked = ? WHERE client_id = ? AND revoked IS NULL",
            (time.time(), client_id),
        )
        if cur.rowcount == 0:
            raise NotFound(f"no active client {client_id!r}")
