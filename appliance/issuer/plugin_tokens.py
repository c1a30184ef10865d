"""Plugin capabilities: one token per plugin run, attenuated to its grant.

The broker mints it from the same root as every capability (the authority
block names the run, the plugin's hash and the requester), then
*attenuates* it with a block holding the plugin's grant and one check that
every call must pass. The plugin only ever sees the attenuated token. A
block it might append can add checks but never facts the grant check or the
authorizer believe (Datalog scoping), so a token cannot be widened.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import biscuit_auth as biscuit

from appliance.errors import TokenError
from appliance.issuer.tokens import TokenService, utc
from appliance.verbs import PLUGIN_READ_OPS, PLUGIN_WRITE_OPS

# -- plugin capabilities -------------------------------------------------------
#
# A plugin run gets one token: the broker mints it from the same root (the
# authority block names the run, the plugin's hash and the requester), then
# *attenuates* it with a block holding the plugin's grant and one check that
# every call must pass. The plugin only ever sees the attenuated token. A
# block it might append can add checks but never facts the grant check or the
# authorizer believe (Datalog scoping), so a token cannot be widened.

# Which file verbs a plugin may call come from the registry (appliance/verbs.py).
PLUGIN_HTTP_OP = "http.request"

_PLUGIN_POLICY = """
check if plugin_sha256($h), want_sha256($h);
allow if plugin_run($r), want_run($r);
"""
_PLUGIN_META = biscuit.Rule(
    "meta($id, $epoch, $run) <- token_id($id), epoch($epoch), plugin_run($run)"
)


def _set(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


_GRANT_CHECK = (
    f"check if op($o), {_set(PLUGIN_READ_OPS)}.contains($o), share($s), grant_read($s)"
    f" or op($o), {_set(PLUGIN_WRITE_OPS)}.contains($o), share($s), grant_write($s),"
    " to_share($t), grant_write($t)"
    f' or op("{PLUGIN_HTTP_OP}"), host($h), grant_host($h);'
)


@dataclass(frozen=True)
class PluginGrant:
    """What a plugin may touch: shares to read, shares to change, HTTP origins."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class PluginCall:
    """One host call as the authorizer sees it (the broker fills it in, never the plugin)."""

    op: str
    share: str = ""
    to_share: str = ""  # a move's destination share; the share itself otherwise
    host: str = ""  # an HTTP call's origin, e.g. "http://127.0.0.1:8123"


def mint_plugin(
    tokens: TokenService,
    *,
    run_id: str,
    plugin: str,
    plugin_sha256: str,
    requester: str,
    grant: PluginGrant,
    ttl_s: float,
) -> tuple[str, str]:
    """A token for one plugin run, attenuated to ``grant`` before anyone sees it.

    Returns the token and its grant block's source: a call's token must carry
    exactly that block, so the bare authority token (wider) is refused even if
    it ever left the broker."""
    expires = math.ceil(tokens.clock() + ttl_s)
    authority_builder = biscuit.BiscuitBuilder(
        "token_id({token_id}); epoch({epoch}); signer({signer}); expires({expires});"
        "plugin_run({run}); plugin({plugin}); plugin_sha256({sha}); requester({requester});"
        "check if time($t), $t < {expires};",
        {
            "token_id": secrets.token_hex(16),
            "epoch": tokens.epoch(),
            "signer": tokens.keystore.label,
            "expires": utc(expires),
            "run": run_id,
            "plugin": plugin,
            "sha": plugin_sha256,
            "requester": requester,
        },
    )
    authority = tokens.sign(authority_builder)
    block = biscuit.BlockBuilder("")
    for fact, values in (
        ("grant_read", grant.read),
        ("grant_write", grant.write),
        ("grant_host", grant.hosts),
    ):
        for value in values:
            block.add_fact(biscuit.Fact(f"{fact}({{v}})", {"v": value}))
    block.add_code(_GRANT_CHECK)
    token = authority.append(block)
    return token.to_base64(), token.block_source(1)


def verify_plugin_call(
    tokens: TokenService,
    token: str,
    *,
    run_id: str,
    plugin_sha256: str,
    grant_source: str,
    call: PluginCall,
) -> None:
    """Refuse (TokenError) unless ``token`` is this run's and its grant covers ``call``."""
    parsed = tokens.parse(token)
    if parsed.block_count() < 2 or parsed.block_source(1) != grant_source:
        raise TokenError(
            "token does not carry this plugin's grant block (unattenuated or re-attenuated)",
            code="capability_refused",
        )
    now = tokens.clock()
    builder = biscuit.AuthorizerBuilder(_PLUGIN_POLICY)
    builder.add_code(
        "time({now}); want_run({run}); want_sha256({sha});"
        "op({op}); share({share}); to_share({to_share}); host({host});",
        {
            "now": utc(now),
            "run": run_id,
            "sha": plugin_sha256,
            "op": call.op,
            "share": call.share,
            "to_share": call.to_share or call.share,
            "host": call.host,
        },
    )
    builder.set_limits(tokens.authorizer_limits)  # type: ignore[attr-defined]
    authorizer: biscuit.Authorizer | None = None
    try:
        authorizer = builder.build(parsed)
        rows = authorizer.query(_PLUGIN_META)
        authorizer.authorize()
    except Exception as exc:  # noqa: BLE001 -- every library error is a refusal
        raise _explain_plugin(exc, authorizer, run_id, call, now) from None
    if len(rows) != 1:
        raise TokenError("token is not a plugin run's capability", code="token_malformed")
    epoch = int(rows[0].terms[1])
    if epoch < tokens.epoch():
        raise TokenError(f"token is from revoked epoch {epoch}", code="token_revoked")


def _explain_plugin(
    exc: Exception, authorizer: biscuit.Authorizer | None, run_id: str, call: PluginCall, now: float
) -> TokenError:
    if authorizer is None or not isinstance(exc, biscuit.AuthorizationError):
        return TokenError(f"token could not be evaluated: {exc}", code="token_malformed")
    try:
        runs = [f.terms[0] for f in authorizer.query(biscuit.Rule("v($x) <- plugin_run($x)"))]
        expiries = [f.terms[0] for f in authorizer.query(biscuit.Rule("v($x) <- expires($x)"))]
    except Exception:  # noqa: BLE001 -- the refusal stands even if explaining fails
        runs, expiries = [], []
    if runs != [run_id]:
        shown = ", ".join(map(repr, runs)) or "none"
        return TokenError(
            f"token belongs to another plugin run ({shown}), not {run_id!r}",
            code="token_mismatch",
        )
    if any(int(x.timestamp()) <= int(now) for x in expiries):
        return TokenError("token expired", code="token_expired")
    what = call.host if call.op == PLUGIN_HTTP_OP else f"share {call.share!r}"
    if call.to_share and call.to_share != call.share:
        what += f" to share {call.to_share!r}"
    return TokenError(
        f"the plugin's capability does not grant {call.op} on {what}", code="capability_refused"
    )
