"""Capability tokens: minted for one action, refused for anything else, usable once."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import threading
from pathlib import Path

import biscuit_auth as biscuit
import pytest

from appliance.db import Database
from appliance.errors import ApplianceError, TokenError
from appliance.issuer.keys import UNSAFE_LABEL, DevKeyStore
from appliance.issuer.tokens import (
    AUTHORIZER_MAX_TIME,
    MAX_TOKEN_CHARS,
    Claims,
    TokenService,
    VerifiedToken,
)

T0 = 1_800_000_000.0  # a fixed "now" for the fake clock (2027)


class FakeClock:
    """A clock the test moves by hand; both mint and verify read it."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


CLAIMS = Claims(
    action_id="act-1",
    verb="file.move",
    resource="share:docs/Inbox/a.pdf",
    intent_digest="ab" * 32,
    requester="client-7",
    approval_id="appr-42",
)


@pytest.fixture
def keys(tmp_path: Path) -> DevKeyStore:
    return DevKeyStore(tmp_path / "keys")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "state.db")
    yield database
    database.close()


@pytest.fixture
def svc(keys: DevKeyStore, db: Database, clock: FakeClock) -> TokenService:
    return TokenService(keys, db, ttl_s=30, clock=clock)


def refused(svc: TokenService, token: str, expected: Claims, code: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        svc.verify_and_spend(token, expected)
    assert info.value.code == code, info.value.reason
    assert info.value.status == 403 or code == "token_unverifiable"
    return info.value


def token_id_of(token: str) -> str:
    """Read the token id without trusting the token (for spent-table assertions)."""
    source = biscuit.UnverifiedBiscuit.from_base64(token).block_source(0)
    line = next(x for x in source.splitlines() if x.startswith("token_id("))
    return line.split('"')[1]


# -- the good path --------------------------------------------------------------


def test_good_path_verifies_and_records_spent(svc: TokenService) -> None:
    token = svc.mint(CLAIMS)
    assert isinstance(token, str) and "+" not in token and "/" not in token  # url-safe
    assert not svc.is_spent(token_id_of(token))

    vt = svc.verify_and_spend(token, CLAIMS)

    assert isinstance(vt, VerifiedToken)
    assert vt.claims == CLAIMS
    assert vt.token_id == token_id_of(token)
    assert vt.epoch == 0
    assert vt.expires_at == int(T0 + 30)
    assert vt.revocation_ids == svc.revocation_ids(token)
    assert svc.is_spent(vt.token_id)


def test_each_mint_has_a_unique_token_id(svc: TokenService) -> None:
    ids = {token_id_of(svc.mint(CLAIMS)) for _ in range(20)}
    assert len(ids) == 20


def test_token_carries_every_claim_as_a_fact(svc: TokenService) -> None:
    claims = dataclasses.replace(CLAIMS, receipt_digest="cd" * 32)
    source = biscuit.UnverifiedBiscuit.from_base64(svc.mint(claims)).block_source(0)
    for fact in (
        'action("act-1")',
        'verb("file.move")',
        'resource("share:docs/Inbox/a.pdf")',
        f'intent_digest("{"ab" * 32}")',
        'requester("client-7")',
        'approval("appr-42")',
        f'receipt_digest("{"cd" * 32}")',
        "epoch(0)",
        "check if time($t), $t < ",
    ):
        assert fact in source
    assert svc.verify_and_spend(svc.mint(claims), claims).claims.receipt_digest == "cd" * 32


def test_mint_refuses_empty_claims(svc: TokenService) -> None:
    with pytest.raises(ApplianceError):
        svc.mint(dataclasses.replace(CLAIMS, verb=""))


# -- the unsafe marker ------------------------------------------------------------


def test_dev_key_token_announces_itself_unsafe(svc: TokenService) -> None:
    token = svc.mint(CLAIMS)
    source = biscuit.UnverifiedBiscuit.from_base64(token).block_source(0)
    assert f'signer("{UNSAFE_LABEL}")' in source
    assert svc.verify_and_spend(token, CLAIMS).unsafe is True


class LabelledKeyStore:
    """The same real root key under another label (stands in for a TPM-certified store)."""

    unsafe = False

    def __init__(self, inner: DevKeyStore, label: str):
        self._inner = inner
        self.label = label

    def device_signer(self):
        return self._inner.device_signer()

    def token_root(self) -> biscuit.KeyPair:
        return self._inner.token_root()

    def secret(self, name: str) -> bytes:
        return self._inner.secret(name)


def test_safe_signer_label_and_signer_must_match(
    keys: DevKeyStore, db: Database, clock: FakeClock
) -> None:
    safe = TokenService(LabelledKeyStore(keys, "tpm-certified"), db, clock=clock)
    dev = TokenService(keys, db, clock=clock)
    token = safe.mint(CLAIMS)
    # Same root key, but a service that signs as "unsafe" expects that label:
    err = refused(dev, token, CLAIMS, "token_mismatch")
    assert "signer" in err.reason
    vt = safe.verify_and_spend(token, CLAIMS)
    assert vt.unsafe is False and vt.signer == "tpm-certified"


# -- expiry -----------------------------------------------------------------------


def test_valid_until_ttl_then_expired(svc: TokenService, clock: FakeClock) -> None:
    early = svc.mint(CLAIMS)
    late = svc.mint(CLAIMS)
    clock.now = T0 + 29
    svc.verify_and_spend(early, CLAIMS)
    clock.now = T0 + 31
    err = refused(svc, late, CLAIMS, "token_expired")
    assert "expired" in err.reason
    assert not svc.is_spent(token_id_of(late))


# -- replay -----------------------------------------------------------------------


def test_second_use_is_replayed(svc: TokenService) -> None:
    token = svc.mint(CLAIMS)
    svc.verify_and_spend(token, CLAIMS)
    refused(svc, token, CLAIMS, "token_replayed")


def test_replay_refused_after_restart(tmp_path: Path, keys: DevKeyStore, clock: FakeClock) -> None:
    db1 = Database(tmp_path / "state.db")
    token = TokenService(keys, db1, clock=clock).mint(CLAIMS)
    TokenService(keys, db1, clock=clock).verify_and_spend(token, CLAIMS)
    db1.close()

    db2 = Database(tmp_path / "state.db")
    keys2 = DevKeyStore(tmp_path / "keys")  # the same root, re-read from disk
    refused(TokenService(keys2, db2, clock=clock), token, CLAIMS, "token_replayed")
    db2.close()


def test_concurrent_uses_exactly_one_wins(svc: TokenService) -> None:
    token = svc.mint(CLAIMS)
    results = _race(16, lambda _i: svc.verify_and_spend(token, CLAIMS))
    wins = [r for r in results if isinstance(r, VerifiedToken)]
    codes = sorted(r.code for r in results if isinstance(r, TokenError))
    assert len(wins) == 1
    assert codes == ["token_replayed"] * 15


def test_concurrent_uses_across_connections_exactly_one_wins(
    tmp_path: Path, keys: DevKeyStore, clock: FakeClock
) -> None:
    """Separate connections (as separate processes would have): SQLite decides."""
    dbs = [Database(tmp_path / "shared.db") for _ in range(16)]
    services = [TokenService(keys, d, clock=clock) for d in dbs]
    token = services[0].mint(CLAIMS)
    results = _race(16, lambda i: services[i].verify_and_spend(token, CLAIMS))
    for d in dbs:
        d.close()
    assert sum(isinstance(r, VerifiedToken) for r in results) == 1
    assert sorted(r.code for r in results if isinstance(r, TokenError)) == ["token_replayed"] * 15


def _race(n: int, fn) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except TokenError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(r is not None for r in results), "a verifier hung or raised something else"
    return results


# -- forged, tampered, malformed ----------------------------------------------------


def test_token_from_another_root_is_forged(
    tmp_path: Path, svc: TokenService, db: Database, clock: FakeClock
) -> None:
    other = TokenService(DevKeyStore(tmp_path / "other-keys"), db, clock=clock)
    forged = other.mint(CLAIMS)  # same claims, same label, wrong key
    refused(svc, forged, CLAIMS, "token_forged")
    assert not svc.is_spent(token_id_of(forged))


def _b64decode(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_every_single_bit_flip_is_refused(svc: TokenService) -> None:
    token = svc.mint(CLAIMS)
    raw = _b64decode(token)
    codes = set()
    for pos in range(len(raw)):
        for bit in (0x01, 0x80):
            bad = bytearray(raw)
            bad[pos] ^= bit
            with pytest.raises(TokenError) as info:
                svc.verify_and_spend(_b64encode(bytes(bad)), CLAIMS)
            codes.add(info.value.code)
    assert codes <= {"token_forged", "token_malformed"}
    assert "token_forged" in codes  # a flip inside signed content is a bad signature
    # None of the attempts burned the genuine token.
    svc.verify_and_spend(token, CLAIMS)


@pytest.mark.parametrize(
    "garbage",
    ["", "not a token", "A" * 40, "%%%%", "x" * (MAX_TOKEN_CHARS + 1)],
)
def test_garbage_is_malformed(svc: TokenService, garbage: str) -> None:
    refused(svc, garbage, CLAIMS, "token_malformed")


def test_truncated_token_is_refused(svc: TokenService) -> None:
    token = svc.mint(CLAIMS)
    with pytest.raises(TokenError) as info:
        svc.verify_and_spend(token[: len(token) // 2], CLAIMS)
    assert info.value.code in {"token_malformed", "token_forged"}


def test_non_string_is_malformed(svc: TokenService) -> None:
    refused(svc, b"bytes", CLAIMS, "token_malformed")  # type: ignore[arg-type]


def _attenuate(svc: TokenService, token: str, code: str) -> str:
    parsed = biscuit.Biscuit.from_base64(token, svc.keystore.token_root().public_key)
    return parsed.append(biscuit.BlockBuilder(code)).to_base64()


def test_appended_block_cannot_change_the_verb(svc: TokenService) -> None:
    """A holder can append a block, but its facts are not the root's facts."""
    token = svc.mint(CLAIMS)  # verb file.move
    wider = dataclasses.replace(CLAIMS, verb="file.delete")
    widened = _attenuate(
        svc,
        token,
        # Everything an attacker might try: the fact itself, and the
        # authorizer's own `want` facts.
        'verb("file.delete"); want("verb", "file.move"); want_none("approval");',
    )
    assert biscuit.Biscuit.from_base64(widened, svc.keystore.token_root().public_key)
    err = refused(svc, widened, wider, "token_mismatch")
    assert "verb" in err.reason and "'file.move'" in err.reason
    # And the unwidened token still works for what it was minted for.
    svc.verify_and_spend(widened, CLAIMS)


def test_appended_block_cannot_add_an_approval(svc: TokenService) -> None:
    token = svc.mint(dataclasses.replace(CLAIMS, approval_id=None))
    forged_approval = _attenuate(svc, token, 'approval("appr-42");')
    err = refused(svc, forged_approval, CLAIMS, "token_mismatch")
    assert "approval_id" in err.reason


def test_appended_block_can_only_narrow(svc: TokenService) -> None:
    token = svc.mint(CLAIMS)
    narrowed = _attenuate(svc, token, 'check if verb("file.read");')
    refused(svc, narrowed, CLAIMS, "token_mismatch")
    assert not svc.is_spent(token_id_of(token))


# -- mismatches ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("verb", "file.delete"),
        ("resource", "share:docs/Inbox/b.pdf"),
        ("intent_digest", "cd" * 32),
        ("requester", "client-8"),
        ("approval_id", "appr-43"),
        ("approval_id", None),  # the token has an approval the executor does not expect
        ("action_id", "act-2"),
        ("receipt_digest", "ef" * 32),
    ],
)
def test_mismatch_is_refused_and_named(svc: TokenService, field: str, value: str | None) -> None:
    token = svc.mint(CLAIMS)
    err = refused(svc, token, dataclasses.replace(CLAIMS, **{field: value}), "token_mismatch")
    assert field in err.reason
    # A refused token is not burned: the real action can still use it.
    assert not svc.is_spent(token_id_of(token))
    svc.verify_and_spend(token, CLAIMS)


def test_missing_approval_is_refused(svc: TokenService) -> None:
    token = svc.mint(dataclasses.replace(CLAIMS, approval_id=None))
    err = refused(svc, token, CLAIMS, "token_mismatch")
    assert "approval_id" in err.reason and "nothing" in err.reason


def test_token_without_approval_verifies_when_none_expected(svc: TokenService) -> None:
    claims = dataclasses.replace(CLAIMS, approval_id=None)
    assert svc.verify_and_spend(svc.mint(claims), claims).claims.approval_id is None


def test_several_mismatches_are_all_named(svc: TokenService) -> None:
    token = svc.mint(CLAIMS)
    wrong = dataclasses.replace(CLAIMS, verb="file.read", requester="mallory")
    err = refused(svc, token, wrong, "token_mismatch")
    assert "verb" in err.reason and "requester" in err.reason


# -- revocation -----------------------------------------------------------------------


def test_revoked_by_revocation_id(svc: TokenService, tmp_path: Path, keys, clock) -> None:
    token = svc.mint(CLAIMS)
    other = svc.mint(CLAIMS)
    svc.revoke(svc.revocation_ids(token)[0])
    refused(svc, token, CLAIMS, "token_revoked")
    assert not svc.is_spent(token_id_of(token))
    svc.verify_and_spend(other, CLAIMS)  # only that token is revoked

    again = Database(tmp_path / "state.db")  # persists across a restart
    refused(TokenService(keys, again, clock=clock), token, CLAIMS, "token_revoked")
    again.close()


def test_revoking_the_root_block_revokes_attenuated_copies(svc: TokenService) -> None:
    token = svc.mint(CLAIMS)
    derived = _attenuate(svc, token, "check if time($t), $t < 2100-01-01T00:00:00Z;")
    svc.revoke(svc.revocation_ids(token)[0])
    refused(svc, derived, CLAIMS, "token_revoked")


def test_revoke_refuses_a_non_hex_id(svc: TokenService) -> None:
    with pytest.raises(ApplianceError) as info:
        svc.revoke("not hex; DROP TABLE")
    assert info.value.code == "bad_revocation_id"


def test_revoke_all_bumps_epoch_and_persists(
    svc: TokenService, tmp_path: Path, keys: DevKeyStore, clock: FakeClock
) -> None:
    before = svc.mint(CLAIMS)
    assert svc.epoch() == 0
    assert svc.revoke_all() == 1
    assert svc.epoch() == 1
    err = refused(svc, before, CLAIMS, "token_revoked")
    assert "epoch" in err.reason
    after = svc.mint(CLAIMS)
    assert svc.verify_and_spend(after, CLAIMS).epoch == 1

    again = Database(tmp_path / "state.db")
    restarted = TokenService(keys, again, clock=clock)
    assert restarted.epoch() == 1
    refused(restarted, before, CLAIMS, "token_revoked")
    refused(restarted, after, CLAIMS, "token_replayed")
    again.close()


# -- spent-table pruning --------------------------------------------------------------


def test_pruning_is_bounded_and_never_revives_a_token(svc: TokenService, clock) -> None:
    old = [svc.mint(CLAIMS) for _ in range(5)]
    for token in old:
        svc.verify_and_spend(token, CLAIMS)
    assert svc.spent_count() == 5

    clock.now = T0 + 30 + svc.prune_margin_s + 5  # past expiry plus the margin
    fresh = svc.mint(CLAIMS)
    assert svc.prune() == 0  # every old record is gone
    svc.verify_and_spend(fresh, CLAIMS)
    assert svc.spent_count() == 1

    # The clock is set back (NTP, a dead RTC battery): the old tokens look
    # valid to their own time check, but their records were pruned. The
    # pruning watermark still refuses them, whatever the clock says.
    clock.now = T0 + 1
    for token in old:
        refused(svc, token, CLAIMS, "token_expired")


def test_no_pruning_within_the_margin(svc: TokenService, clock: FakeClock) -> None:
    token = svc.mint(CLAIMS)
    svc.verify_and_spend(token, CLAIMS)
    clock.now = T0 + 30 + svc.prune_margin_s - 5
    assert svc.prune() == 1


# -- limits -----------------------------------------------------------------------------


def test_authorizer_time_limit_is_raised_well_above_default(svc: TokenService) -> None:
    default = biscuit.AuthorizerBuilder().limits().max_time
    assert default <= dt.timedelta(milliseconds=1)
    assert 100 * default <= AUTHORIZER_MAX_TIME
    assert svc._limits.max_time == AUTHORIZER_MAX_TIME


def test_root_signed_token_with_two_values_is_refused(svc: TokenService) -> None:
    """mint() never writes a fact twice; a token that does is refused, not half-read."""
    code = (
        'token_id("dup"); epoch(0); signer({signer}); expires({exp});'
        'action("act-1"); verb("file.move"); verb("file.delete");'
        'resource("share:docs/Inbox/a.pdf"); intent_digest({digest});'
        'requester("client-7"); approval("appr-42");'
    )
    params = {
        "signer": UNSAFE_LABEL,
        "exp": dt.datetime.fromtimestamp(T0 + 30, tz=dt.UTC),
        "digest": "ab" * 32,
    }
    token = (
        biscuit.BiscuitBuilder(code, params)
        .build(svc.keystore.token_root().private_key)
        .to_base64()
    )
    refused(svc, token, CLAIMS, "token_malformed")
    two_approvals = dataclasses.replace(CLAIMS, verb="file.move")
    token2 = (
        biscuit.BiscuitBuilder(code.replace('verb("file.delete");', 'approval("appr-x");'), params)
        .build(svc.keystore.token_root().private_key)
        .to_base64()
    )
    err = refused(svc, token2, two_approvals, "token_mismatch")
    assert "approval_id" in err.reason


def test_authorizer_running_out_of_time_fails_closed(svc: TokenService) -> None:
    token = svc.mint(CLAIMS)
    svc._limits.max_time = dt.timedelta(microseconds=1)
    err = refused(svc, token, CLAIMS, "token_unverifiable")
    assert err.status == 503
    assert not svc.is_spent(token_id_of(token))
