"""Paired clients: pairing requests, credentials, grants, revocation.

A desktop asks to pair, naming the grant it wants; a person approves on the
panel; the desktop then fetches its credential exactly once, with the
pairing secret only it was told. The box keeps only an HMAC of each secret
(keyed with a pepper from the key store) and a hash of each pairing secret,
so a copy of the database does not let anyone call the API or take a
pairing over.

A credential reads ``<client_id>.<secret>``: the id finds the row, the
secret is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from appliance.broker.grants import Grant
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
CREATE TABLE IF NOT EXISTS pairing_requests (
    ref TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    grant_json TEXT NOT NULL,
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


def pairing_ref(secret: str) -> str:
    """The public reference of a pairing: what the panel, the approvals and
    the log show instead of the secret only the requester knows."""
    return "pr_" + hashlib.sha256(secret.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ClientRecord:
    client_id: str
    name: str
    grant: Grant
    created: float
    revoked: float | None

    @property
    def active(self) -> bool:
        return self.revoked is None and not self.grant.expired()


class Clients:
    def __init__(self, db: Database, pepper: bytes, shares: list[str]):
        self.db = db
        self._pepper = pepper
        self._shares = shares
        db.ensure(SCHEMA)
        columns = {r["name"] for r in db.all("PRAGMA table_info(clients)")}
        if "grant_json" not in columns:
            db.execute("ALTER TABLE clients ADD COLUMN grant_json TEXT")

    def _hmac(self, secret: str) -> str:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()

    # -- pairing ---------------------------------------------------------
    def new_pairing(self, name: str, address: str, grant: Grant) -> tuple[str, str]:
        """A pairing request: (its secret, for the requester alone; its public ref)."""
        secret = "pair_" + secrets.token_urlsafe(24)
        ref = pairing_ref(secret)
        self.db.execute(
            "INSERT INTO pairing_requests (ref, secret_sha256, name, address, grant_json,"
            " status, created) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            (
                ref,
                hashlib.sha256(secret.encode()).hexdigest(),
                check_name(name),
                address,
                json.dumps(grant.to_json()),
                time.time(),
            ),
        )
        return secret, ref

    def attach_approval(self, ref: str, approval_id: str, code: str) -> None:
        self.db.execute(
            "UPDATE pairing_requests SET approval_id = ?, code = ? WHERE ref = ?",
            (approval_id, code, ref),
        )

    def drop_pairing(self, ref: str) -> None:
        self.db.execute("DELETE FROM pairing_requests WHERE ref = ?", (ref,))

    def _pairing(self, secret: str) -> dict[str, Any]:
        row = self.db.one(
            "SELECT * FROM pairing_requests WHERE secret_sha256 = ?",
            (hashlib.sha256(secret.encode()).hexdigest(),),
        )
        if row is None:
            raise NotFound("no such pairing (the pairing id is the secret its requester was told)")
        return dict(row)

    def pairing_request(self, ref: str) -> dict[str, Any] | None:
        """A pairing request by its public reference: who asks (name,
        address) and the grant it asks for; never its secret."""
        row = self.db.one(
            "SELECT name, address, grant_json, status FROM pairing_requests WHERE ref = ?", (ref,)
        )
        if row is None:
            return None
        grant = Grant.from_json(json.loads(row["grant_json"]))
        return {
            "name": row["name"],
            "address": row["address"],
            "grant": grant,
            "status": row["status"],
        }

    def set_pairing_status(self, ref: str, status: str) -> None:
        self.db.execute(
            "UPDATE pairing_requests SET status = ? WHERE ref = ? AND status = 'pending'",
            (status, ref),
        )

    def deliver(self, secret: str) -> dict[str, Any]:
        """The credential of an approved pairing, exactly once, to whoever
        holds the pairing secret."""
        row = self._pairing(secret)
        if row["status"] != "approved":
            return {"pairing_id": secret, "status": row["status"], "code": row["code"]}
        credential_secret = secrets.token_urlsafe(32)
        client_id = "cl_" + secrets.token_hex(8)
        with self.db.tx() as conn:
            taken = conn.execute(
                "UPDATE pairing_requests SET delivered = 1, client_id = ? "
                "WHERE ref = ? AND delivered = 0",
                (client_id, row["ref"]),
            ).rowcount
            if not taken:
                raise ApplianceError(
                    "this pairing's credential was already delivered; pair again if it was lost",
                    code="already_delivered",
                    status=410,
                )
            conn.execute(
                "INSERT INTO clients (client_id, name, secret_hmac, created, grant_json)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    client_id,
                    row["name"],
                    self._hmac(credential_secret),
                    time.time(),
                    row["grant_json"],
                ),
            )
        return {
            "client_id": client_id,
            "credential": f"{client_id}.{credential_secret}",
            "status": "approved",
            "grant": json.loads(row["grant_json"]),
            "ref": row["ref"],
        }

    # -- credentials -----------------------------------------------------
    def authenticate(self, credential: str) -> str:
        """The client id a bearer credential belongs to, or Unauthorized."""
        client_id, _, secret = credential.partition(".")
        row = self.db.one("SELECT * FROM clients WHERE client_id = ?", (client_id,))
        # Compare even when the row is missing, so timing does not tell ids apart.
        expected = row["secret_hmac"] if row else self._hmac("\0absent")
        if not hmac.compare_digest(expected, self._hmac(secret)) or row is None:
            raise Unauthorized("unknown credential: pair this desktop first")
        record = self._record(dict(row))
        if record.revoked is not None:
            raise Unauthorized(f"client {client_id} was revoked; pair again", code="revoked")
        if record.grant.expired():
            raise Unauthorized(
                f"client {client_id}'s pairing has ended; pair again", code="grant_expired"
            )
        return client_id

    def get(self, client_id: str) -> ClientRecord | None:
        row = self.db.one("SELECT * FROM clients WHERE client_id = ?", (client_id,))
        return self._record(dict(row)) if row else None

    def _record(self, row: dict[str, Any]) -> ClientRecord:
        raw = row.get("grant_json")
        # Paired before grants existed: it could change every share (with a
        # press) then, and keeps that; it sees only its own history.
        grant = (
            Grant.from_json(json.loads(raw))
            if raw
            else Grant(read=frozenset(self._shares), write=frozenset(self._shares))
        )
        return ClientRecord(row["client_id"], row["name"], grant, row["created"], row["revoked"])

    def display_name(self, client_id: str) -> str:
        """How a person is shown the client: its paired name and its id."""
        record = self.get(client_id)
        return f"{shown(record.name)} ({client_id})" if record else client_id

    def list(self) -> list[dict[str, Any]]:
        rows = self.db.all("SELECT * FROM clients ORDER BY created")
        out = []
        for row in rows:
            record = self._record(dict(row))
            out.append(
                {
                    "client_id": record.client_id,
                    "name": record.name,
                    "created": record.created,
                    "revoked": record.revoked,
                    "grant": record.grant.to_json(),
                }
            )
        return out

    def revoke(self, client_id: str) -> None:
        cur = self.db.execute(
            "UPDATE clients SET revoked = ? WHERE client_id = ? AND revoked IS NULL",
            (time.time(), client_id),
        )
        if cur.rowcount == 0:
            raise NotFound(f"no active client {client_id!r}")
