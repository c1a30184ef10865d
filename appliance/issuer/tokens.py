"""Single-use capability tokens (Biscuit) for exactly one action.

The broker mints one token per approved action; the executor refuses to act
without a token that (1) was signed by the box's token root, (2) names
exactly the action it is about to perform, (3) has not expired, (4) has not
been revoked, and (5) has never been used before. The last point is what makes
a token single-use: its id goes into the ``token_spent`` table in the same
SQLite transaction that checks revocation, so a second use -- concurrent or
after a restart -- is refused as replayed.

Datalog scoping does the rest: the authorizer's checks only see facts of the
authority block (signed by the root) and of the authorizer itself, so a block
appended by whoever holds the token can add checks (narrow it) but never
facts that the executor's checks would believe (widen it).

See docs/tokens.md for the token's content, every refusal code, revocation,
epochs and the spent-table pruning rule.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import biscuit_auth as biscuit

from appliance.db import Database
from appliance.errors import ApplianceError, TokenError
from appliance.issuer.keys import UNSAFE_LABEL, KeyStore

# A Biscuit of ours is ~500 characters; refusing huge inputs before parsing
# keeps a LAN peer from making the executor chew on megabytes.
MAX_TOKEN_CHARS = 16_384
# The authorizer's default run-time limit is 1 ms, which denies valid tokens
# when the box is busy (GC pause, another thread holding the GIL). Our Datalog
# is a handful of facts and checks, so a generous wall-clock limit costs
# nothing in the normal case and only bounds a pathological token.
AUTHORIZER_MAX_TIME = dt.timedelta(milliseconds=250)
# Spent ids are kept at least this long after their token's expiry.
DEFAULT_PRUNE_MARGIN_S = 300.0
# How often (seconds of the service clock) a spend also prunes old spent ids.
PRUNE_INTERVAL_S = 60.0

# Claim fields the executor compares, in the order mismatches are reported.
# Optional claims (None) must be *absent* from the token: a token carrying an
# approval the executor did not expect is as wrong as one lacking it.
_FIELD_FACT = {
    "action_id": "action",
    "verb": "verb",
    "resource": "resource",
    "intent_digest": "intent_digest",
    "requester": "requester",
    "approval_id": "approval",
    "receipt_digest": "receipt_digest",
}
_OPTIONAL_FACTS = ("approval", "receipt_digest")
_REQUIRED_FACTS = ("signer",) + tuple(f for f in _FIELD_FACT.values() if f not in _OPTIONAL_FACTS)
# One row per combination of the token's authority facts: exactly one row
# means each of them appears exactly once.
_META_RULE = (
    "meta($id, $epoch, $exp, "
    + ", ".join(f"${f}" for f in _REQUIRED_FACTS)
    + ") <- token_id($id), epoch($epoch), expires($exp), "
    + ", ".join(f"{f}(${f})" for f in _REQUIRED_FACTS)
)
_HEX = re.compile(r"^[0-9a-f]+$")


def _policy_source() -> str:
    """The executor's fixed checks; per request only ``want``/``want_none`` facts change.

    Required claims (and the signer) must all equal what the executor wants:
    one joined ``check if``. An optional claim must equal the wanted value,
    or be absent when the executor wants none (``want_none``); a second,
    different value is rejected. A claim with neither fact fails: fail closed.
    That each required fact appears once is checked by the query in
    ``_verify`` (it must return exactly one row), which costs less than one
    ``reject`` rule per claim.
    """
    joined = ", ".join(
        f'{fact}($x{i}), want("{fact}", $x{i})' for i, fact in enumerate(_REQUIRED_FACTS)
    )
    lines = [f"check if {joined};"]
    for fact in _OPTIONAL_FACTS:
        lines += [
            f'check if {fact}($x), want("{fact}", $x) or want_none("{fact}");',
            f'reject if {fact}($x), want("{fact}", $y), $x != $y;',
            f'reject if {fact}($x), want_none("{fact}");',
        ]
    lines.append("allow if true;")
    return "\n".join(lines)


_POLICY = _policy_source()

_DDL = """
CREATE TABLE IF NOT EXISTS token_spent (
    token_id   TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    spent_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS token_spent_expires ON token_spent (expires_at);
CREATE TABLE IF NOT EXISTS token_revoked (
    revocation_id TEXT PRIMARY KEY,
    revoked_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS token_state (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO token_state (key, value) VALUES ('epoch', 0);
INSERT OR IGNORE INTO token_state (key, value) VALUES ('pruned_through', 0);
"""


@dataclass(frozen=True)
class Claims:
    """What one token allows: exactly one action, by one requester, on one resource."""

    action_id: str
    verb: str
    resource: str  # canonical, e.g. "share:docs/Inbox/a.pdf"
    intent_digest: str  # hex
    requester: str  # paired client id
    approval_id: str | None
    receipt_digest: str | None = None  # digest of the signed approval receipt


@dataclass(frozen=True)
class VerifiedToken:
    """A token that passed every check and is now recorded as spent."""

    token_id: str
    claims: Claims
    epoch: int
    expires_at: int  # unix seconds
    signer: str
    unsafe: bool  # signed by a development key store
    revocation_ids: tuple[str, ...]
    spent_at: float


@dataclass(frozen=True)
class _Checked:
    token_id: str
    epoch: int
    expires_at: int
    signer: str
    revocation_ids: tuple[str, ...]


def utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


class TokenService:
    """Mints and spends single-use Biscuit capability tokens.

    ``clock`` returns unix seconds; tests pass a fake one. Biscuit dates have
    one-second resolution, so a token lives ``ttl_s`` rounded up to a second.
    """

    def __init__(
        self,
        keystore: KeyStore,
        db: Database,
        *,
        ttl_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        prune_margin_s: float = DEFAULT_PRUNE_MARGIN_S,
    ):
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.keystore = keystore
        self.db = db
        self.ttl_s = ttl_s
        self.clock = clock
        self.prune_margin_s = prune_margin_s
        self._root = keystore.token_root()
        self._public = self._root.public_key
        self._last_prune = -math.inf
        self._policy = biscuit.AuthorizerBuilder(_POLICY)
        # biscuit-python 0.4.0's type stubs lag its library (limits, set_limits,
        # merging a builder exist).
        self._limits = self._policy.limits()  # type: ignore[attr-defined]
        self._limits.max_time = AUTHORIZER_MAX_TIME
        self._meta_rule = biscuit.Rule(_META_RULE)
        db.ensure(_DDL)

    # -- minting -----------------------------------------------------------

    @property
    def authorizer_limits(self) -> Any:
        """The run-time limits every authorizer of this service gets (the
        library's AuthorizerLimits, which its type stubs do not declare)."""
        return self._limits

    def sign(self, builder: biscuit.BiscuitBuilder) -> biscuit.Biscuit:
        """Sign an authority block with the token root (it never leaves memory)."""
        return builder.build(self._root.private_key)

    def mint(self, claims: Claims) -> str:
        """Sign a token for exactly ``claims``; returns url-safe base64."""
        for f in fields(Claims):
            value = getattr(claims, f.name)
            if value is None and f.name in ("approval_id", "receipt_digest"):
                continue
            if not isinstance(value, str) or not value:
                raise ApplianceError(
                    f"claim {f.name} must be a non-empty string", code="bad_claims"
                )
        expires = math.ceil(self.clock() + self.ttl_s)
        params: dict[str, object] = {
            "token_id": secrets.token_hex(16),
            "epoch": self.epoch(),
            "signer": self.keystore.label,
            "expires": utc(expires),
        }
        lines = [
            "token_id({token_id});",
            "epoch({epoch});",
            "signer({signer});",
            "expires({expires});",
            # The token's own check: evaluated by every authorizer, whatever
            # checks the verifier remembers to add.
            "check if time($t), $t < {expires};",
        ]
        for name, fact in _FIELD_FACT.items():
            value = getattr(claims, name)
            if value is not None:
                lines.append(f"{fact}({{{name}}});")
                params[name] = value
        builder = biscuit.BiscuitBuilder("\n".join(lines), params)
        return self.sign(builder).to_base64()

    # -- verification --------------------------------------------------------

    def verify_and_spend(
        self,
        token: str,
        expected: Claims,
        on_spend: Callable[[sqlite3.Connection, str], None] | None = None,
    ) -> VerifiedToken:
        """The executor's gate: check everything, then record the token as spent.

        Raises TokenError (token_malformed, token_forged, token_expired,
        token_mismatch, token_revoked, token_replayed). A refused token is
        never marked spent, so a mismatch does not burn the real action.
        """
        checked = self._verify(token, expected)
        return self._spend(checked, expected, on_spend)

    def _verify(self, token: str, expected: Claims) -> _Checked:
        """Signature, claims and expiry; no database access (cheap to measure alone)."""
        parsed = self.parse(token)
        now = self.clock()
        # Merging the pre-parsed policy and parsing only the facts halves the
        # cost of building the authorizer (see bench/bench_tokens.py).
        builder = biscuit.AuthorizerBuilder()
        builder.merge(self._policy)  # type: ignore[arg-type]
        builder.add_code(*self._expected_facts(expected, now))
        builder.set_limits(self._limits)  # type: ignore[attr-defined]
        authorizer: biscuit.Authorizer | None = None
        try:
            authorizer = builder.build(parsed)
            # Queries trust the authority block and the authorizer only, so
            # these values are the ones the root signed, whatever was appended.
            rows = authorizer.query(self._meta_rule)
            authorizer.authorize()
        except Exception as exc:  # noqa: BLE001 -- every library error is a refusal
            raise self._explain(exc, authorizer, expected, now) from None
        if len(rows) != 1:
            # mint() writes each fact once; several mean the token was made
            # by something else holding the root key.
            raise TokenError(
                "token does not carry exactly one id, epoch, expiry, signer and claim each",
                code="token_malformed",
            )
        token_id, epoch, expires, signer = rows[0].terms[:4]
        return _Checked(
            token_id=token_id,
            epoch=int(epoch),
            expires_at=int(expires.timestamp()),
            signer=signer,
            revocation_ids=tuple(parsed.revocation_ids),
        )

    def parse(self, token: str) -> biscuit.Biscuit:
        """The token, its signature checked against this box's root (TokenError:
        malformed, or forged)."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise TokenError("token is empty, not text, or too long", code="token_malformed")
        try:
            return biscuit.Biscuit.from_base64(token, self._public)
        except Exception:  # noqa: BLE001 -- classified below, never let through
            pass
        # The library gives one error for "not a Biscuit" and "bad signature";
        # parsing without verification tells them apart for the reason.
        try:
            biscuit.UnverifiedBiscuit.from_base64(token)
        except Exception:  # noqa: BLE001
            raise TokenError("token is not a valid Biscuit", code="token_malformed") from None
        raise TokenError(
            "token signature does not verify with this box's token root "
            "(forged, tampered, or signed by another key)",
            code="token_forged",
        )

    def _expected_facts(self, expected: Claims, now: float) -> tuple[str, dict[str, object]]:
        """The per-request authorizer facts: the clock and what the executor expects."""
        params: dict[str, object] = {"now": utc(now), "signer": self.keystore.label}
        lines = ["time({now});", 'want("signer", {signer});']
        for name, fact in _FIELD_FACT.items():
            value = getattr(expected, name)
            if value is None:
                lines.append(f'want_none("{fact}");')
            else:
                lines.append(f'want("{fact}", {{{name}}});')
                params[name] = value
        return "\n".join(lines), params

    def _explain(
        self,
        exc: Exception,
        authorizer: biscuit.Authorizer | None,
        expected: Claims,
        now: float,
    ) -> TokenError:
        """Turn a Datalog refusal into a code and a reason naming the field.

        Runs only on the refusal path, so the extra queries cost nothing on
        the good path. The values shown come from the authority block only.
        """
        message = str(exc)
        if "limits" in message.lower():
            return TokenError(
                "token check exceeded the authorizer's limits; refused",
                code="token_unverifiable",
                status=503,
            )
        if authorizer is None or not isinstance(exc, biscuit.AuthorizationError):
            return TokenError(f"token could not be evaluated: {message}", code="token_malformed")
        try:
            return self._name_mismatch(authorizer, expected, now, message)
        except Exception:  # noqa: BLE001 -- the refusal stands even if explaining fails
            return TokenError(f"token check failed: {message}", code="token_mismatch")

    def _name_mismatch(
        self, authorizer: biscuit.Authorizer, expected: Claims, now: float, message: str
    ) -> TokenError:

        def values(fact: str) -> list:
            return sorted(
                (f.terms[0] for f in authorizer.query(biscuit.Rule(f"v($x) <- {fact}($x)"))),
                key=str,
            )

        wrong: list[str] = []
        wanted = [("signer", "signer", self.keystore.label)]
        wanted += [(name, fact, getattr(expected, name)) for name, fact in _FIELD_FACT.items()]
        for name, fact, want in wanted:
            got = values(fact)
            if got != ([want] if want is not None else []):
                shown = ", ".join(repr(g) for g in got) or "nothing"
                wrong.append(f"{name} (token has {shown}, expected {want!r})")
        if wrong:
            return TokenError(
                "token does not match the action: " + "; ".join(wrong), code="token_mismatch"
            )
        expiries = values("expires")
        if any(int(x.timestamp()) <= int(now) for x in expiries):
            return TokenError(f"token expired at {expiries[0].isoformat()}", code="token_expired")
        # Left: a check appended by a holder of the token (attenuation) failed.
        return TokenError(f"token check failed: {message}", code="token_mismatch")

    def _spend(
        self,
        checked: _Checked,
        expected: Claims,
        on_spend: Callable[[sqlite3.Connection, str], None] | None = None,
    ) -> VerifiedToken:
        """Revocation, epoch and single use, in one write transaction."""
        now = self.clock()
        try:
            with self.db.tx() as conn:
                # Inside the transaction: a revoke() or revoke_all() either
                # lands before this check or after the spend, never between.
                state = dict(conn.execute("SELECT key, value FROM token_state").fetchall())
                if checked.epoch < state["epoch"]:
                    raise TokenError(
                        f"token is from epoch {checked.epoch}; all tokens before epoch "
                        f"{state['epoch']} were revoked",
                        code="token_revoked",
                    )
                marks = ",".join("?" * len(checked.revocation_ids))
                hit = conn.execute(
                    f"SELECT revocation_id FROM token_revoked WHERE revocation_id IN ({marks})",
                    checked.revocation_ids,
                ).fetchone()
                if hit is not None:
                    raise TokenError(
                        f"token was revoked (revocation id {hit[0][:16]}...)", code="token_revoked"
                    )
                if checked.expires_at <= state["pruned_through"]:
                    # Its spent record may have been pruned: only this
                    # clock-independent refusal keeps pruning safe.
                    raise TokenError(
                        "token expired (older than the kept record of spent tokens)",
                        code="token_expired",
                    )
                conn.execute(
                    "INSERT INTO token_spent (token_id, expires_at, epoch, spent_at)"
                    " VALUES (?, ?, ?, ?)",
                    (checked.token_id, checked.expires_at, checked.epoch, now),
                )
                if on_spend is not None:
                    # The caller's record of what the token is for lands in the
                    # same transaction as the spend (e.g. "action running").
                    on_spend(conn, checked.token_id)
                if now - self._last_prune >= PRUNE_INTERVAL_S:
                    self._prune(conn, now)
        except sqlite3.IntegrityError:
            raise TokenError("token was already used", code="token_replayed") from None
        return VerifiedToken(
            token_id=checked.token_id,
            claims=expected,
            epoch=checked.epoch,
            expires_at=checked.expires_at,
            signer=checked.signer,
            unsafe=checked.signer == UNSAFE_LABEL,
            revocation_ids=checked.revocation_ids,
            spent_at=now,
        )

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        """Forget spent ids whose tokens expired more than the margin ago.

        Safe because ``pruned_through`` is raised to the latest expiry deleted
        and every token expiring at or before it is refused before the spent
        table is consulted -- whatever the clock says later (a clock set back
        by NTP cannot revive a pruned token).
        """
        cutoff = int(now - self.prune_margin_s)
        row = conn.execute(
            "SELECT MAX(expires_at) FROM token_spent WHERE expires_at < ?", (cutoff,)
        ).fetchone()
        if row[0] is not None:
            conn.execute(
                "UPDATE token_state SET value = MAX(value, ?) WHERE key = 'pruned_through'",
                (row[0],),
            )
            conn.execute("DELETE FROM token_spent WHERE expires_at <= ?", (row[0],))
        self._last_prune = now

    def prune(self, now: float | None = None) -> int:
        """Prune now (normally done during spends; ``now``: as if at that time);
        returns the spent ids left."""
        with self.db.tx() as conn:
            self._prune(conn, self.clock() if now is None else now)
        return self.spent_count()

    def spent_count(self) -> int:
        """How many spent ids are on record."""
        row = self.db.one("SELECT COUNT(*) FROM token_spent")
        return int(row[0]) if row else 0

    def is_spent(self, token_id: str) -> bool:
        """Whether a token id is recorded as spent."""
        return self.db.one("SELECT 1 FROM token_spent WHERE token_id = ?", (token_id,)) is not None

    # -- revocation ------------------------------------------------------------

    def revocation_ids(self, token: str) -> tuple[str, ...]:
        """The revocation ids of a token signed by our root (to revoke it before use)."""
        return tuple(self.parse(token).revocation_ids)

    def revoke(self, revocation_id: str) -> None:
        """Refuse, from now on, every token carrying this revocation id."""
        rid = revocation_id.strip().lower() if isinstance(revocation_id, str) else ""
        if not rid or not _HEX.match(rid):
            raise ApplianceError("revocation id must be a hex string", code="bad_revocation_id")
        with self.db.tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO token_revoked (revocation_id, revoked_at) VALUES (?, ?)",
                (rid, self.clock()),
            )

    def revoke_all(self) -> int:
        """Bump the epoch: every token minted before now is refused. Returns the new epoch."""
        with self.db.tx() as conn:
            conn.execute("UPDATE token_state SET value = value + 1 WHERE key = 'epoch'")
            new = conn.execute("SELECT value FROM token_state WHERE key = 'epoch'").fetchone()[0]
            # Spent ids of older epochs are refused by the epoch check alone.
            conn.execute("DELETE FROM token_spent WHERE epoch < ?", (new,))
        return int(new)

    def root_public(self) -> bytes:
        """The raw public key tokens are verified against (the boot statement
        must name exactly this one)."""
        return bytes(self._public.to_bytes())

    def sync_epoch(self, epoch: int) -> int:
        """Raise the stored epoch to the key store's (the TPM's NV counter is the
        authority; the database keeps a copy so each spend checks it cheaply).

        A key store epoch *below* the stored one means the counter was reset or
        this is another TPM: refuse (fail closed) rather than accept old tokens.
        """
        with self.db.tx() as conn:
            row = conn.execute("SELECT value FROM token_state WHERE key = 'epoch'").fetchone()
            current = row[0]
            if epoch < current:
                raise TokenError(
                    f"the key store's epoch {epoch} is below the recorded epoch {current}: "
                    "the TPM counter was reset or this is another TPM",
                    code="epoch_rollback",
                    status=503,
                )
            if epoch > current:
                conn.execute("UPDATE token_state SET value = ? WHERE key = 'epoch'", (epoch,))
                conn.execute("DELETE FROM token_spent WHERE epoch < ?", (epoch,))
        return epoch

    def epoch(self) -> int:
        """The current epoch; tokens minted in an earlier one are refused."""
        row = self.db.one("SELECT value FROM token_state WHERE key = 'epoch'")
        return int(row[0]) if row else 0
