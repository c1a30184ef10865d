"""The broker's side of a plugin run: the host functions behind the sandbox.

A run, in order:

1. The installed plugin is loaded and checked again (signature by a pinned
   publisher, module hash); a refused plugin never starts.
2. The broker mints one capability for the run from its token root and
   attenuates it to the plugin's grant (shares to read, shares to change, web
   origins) before the plugin sees it. ``plugin.started`` is audited with the
   plugin's name, version and module hash.
3. The module runs in wasmtime (fuel, memory, log and output limits). Each
   host call carries the token and passes, in order: the lexical path check,
   the token (signature, this run, the grant), scope resolution inside the
   share (no ``..``, symlinks, special files), and the same Cedar policy a
   desktop's intent meets. A refusal stops the plugin with the reason.
4. Reads run at once (policy allows them for a desktop too). Changes are
   *proposed*: after the run they become one plan, submitted for the
   requester like a desktop's, so they meet policy, the approval press,
   single-use tokens, snapshots and undo. Every proposed field is marked as
   derived from content: no owner rule can let a plugin change files without
   a press.
5. HTTP requests are made by the broker, only to an origin the grant lists
   and the policy allows; no redirects are followed, the answer is bounded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from appliance.audit import AuditLog
from appliance.broker.evaluate import Evaluator
from appliance.broker.files import FileOps
from appliance.broker.scope import Shares
from appliance.config import Config
from appliance.errors import ApplianceError, ExecutionError, NotFound, ScopeError, TokenError
from appliance.intents import Intent, Provenance, canonical_json
from appliance.issuer.plugin_tokens import (
    PLUGIN_HTTP_OP,
    PluginCall,
    PluginGrant,
    mint_plugin,
    verify_plugin_call,
)
from appliance.issuer.tokens import TokenService
from appliance.names import lone_surrogate
from appliance.plugins.egress import pinned_url, remote_address
from appliance.plugins.package import Plugin, PluginStore, load, normalise_origin
from appliance.plugins.runtime import PluginStopped, Runtime
from appliance.policy import PolicyRequest
from appliance.verbs import NET_VERB, PLUGIN_READ_OPS, PLUGIN_WRITE_OPS, REGISTRY

log = logging.getLogger("appliance.plugins")

MAX_CALL_BYTES = 4 << 20
# The file operations a plugin may call and the parameters each takes, from
# the verb registry (the intent's own validation then checks their types).
CALL_PARAMS: dict[str, tuple[str, ...]] = {
    op: tuple(REGISTRY[op].params) for op in (*PLUGIN_READ_OPS, *PLUGIN_WRITE_OPS)
}
HTTP_METHODS = ("GET", "POST", "PUT")


# What a run's proposed changes are handed to: the broker's submit (scope,
# policy, the approval press), with what proposed them for the summary.
Submit = Callable[..., dict[str, Any]]


class PluginHost:
    """Installed plugins and their runs, on behalf of the broker."""

    def __init__(
        self,
        *,
        config: Config,
        tokens: TokenService,
        shares: Shares,
        files: FileOps,
        evaluator: Evaluator,
        audit: AuditLog,
    ) -> None:
        self.config = config
        self.tokens = tokens
        self.shares = shares
        self.files = files
        self.evaluator = evaluator
        self.audit = audit
        self.limits = config.plugin_limits
        self.store = PluginStore(config.plugins_dir, config.plugin_publishers)
        self.runtime = Runtime()

    def list(self) -> list[dict[str, Any]]:
        return self.store.list()

    def install(self, source: Path) -> dict[str, Any]:
        """Check a plugin folder against the pinned publishers and install it (audited)."""
        try:
            plugin = self.store.install(source)
            self.runtime.compile(plugin.sha256, plugin.module)  # refuse a bad module now
        except ApplianceError as e:
            self.audit.append(
                "plugin.install_refused", {"source": str(source), "error": e.to_dict()}
            )
            raise
        self.audit.append("plugin.installed", _ident(plugin))
        return plugin.public()

    def remove(self, name: str) -> dict[str, Any]:
        self.store.remove(name)
        self.audit.append("plugin.removed", {"plugin": name})
        return {"removed": name}

    def verify(self, what: str) -> dict[str, Any]:
        """Check an installed plugin (by name) or a folder, without installing it."""
        source = Path(what)
        plugin = self.store.get(what) if "/" not in what else load(source, self.store.publishers)
        self.runtime.compile(plugin.sha256, plugin.module, cache=False)
        return {**plugin.public(), "status": "ok"}

    def grant(self, plugin: Plugin) -> PluginGrant:
        """The manifest's grant, less shares this box does not have."""
        shares = set(self.config.shares)
        g = plugin.manifest.grant
        return PluginGrant(
            read=tuple(s for s in g.read if s in shares),
            write=tuple(s for s in g.write if s in shares),
            hosts=g.hosts,
        )

    def run(
        self, requester: str, name: str, verb: str, value: Any = None, *, submit: Submit
    ) -> dict[str, Any]:
        """Run one of a plugin's verbs for ``requester``; its proposed changes go
        to ``submit`` as one plan."""
        try:
            plugin = self.store.get(name)
        except ApplianceError as e:
            self.audit.append("plugin.refused", {"plugin": name, "error": e.to_dict()})
            raise
        m = plugin.manifest
        if verb not in m.verbs:
            raise NotFound(f"plugin {name} has no verb {verb!r} (it has {sorted(m.verbs)})")
        ident = _ident(plugin)
        run_id = f"run_{secrets.token_hex(8)}"
        grant = self.grant(plugin)
        token, grant_source = mint_plugin(
            self.tokens,
            run_id=run_id,
            plugin=m.name,
            plugin_sha256=plugin.sha256,
            requester=requester,
            grant=grant,
            ttl_s=self.limits.token_ttl_s,
        )
        input_ = canonical_json(value)
        self.audit.append(
            "plugin.started",
            {
                "run_id": run_id,
                **ident,
                "verb": verb,
                "requester": requester,
                "input_sha256": hashlib.sha256(input_).hexdigest(),
                "grant": {"read": grant.read, "write": grant.write, "hosts": grant.hosts},
            },
        )
        calls = _Calls(self, plugin, run_id, requester, grant_source)
        try:
            module = self.runtime.compile(plugin.sha256, plugin.module)
            result = self.runtime.run(
                module,
                verb,
                input_=input_,
                capability=token.encode(),
                call=calls,
                limits=self.limits,
            )
        except PluginStopped as e:
            self.audit.append_quietly(
                "plugin.stopped",
                {"run_id": run_id, **ident, "verb": verb, "calls": calls.count, **e.to_dict()},
            )
            e.reason = f"plugin {m.name} {m.version} (run {run_id}) was stopped: {e.reason}"
            raise
        except Exception as e:
            # Whatever ended the run, its end is in the log.
            why = e.to_dict() if isinstance(e, ApplianceError) else {"code": "host_error"}
            self.audit.append_quietly(
                "plugin.stopped",
                {
                    "run_id": run_id,
                    **ident,
                    "verb": verb,
                    "calls": calls.count,
                    "reason": f"{type(e).__name__} in the broker",
                    **why,
                },
            )
            raise
        plan = None
        if calls.proposals:
            via = f"plugin {m.name} {m.version} (sha256 {plugin.sha256[:12]})"
            plan = submit(requester, calls.proposals, via=via)
        output = result.output.decode("utf-8", "replace")
        self.audit.append(
            "plugin.finished",
            {
                "run_id": run_id,
                **ident,
                "verb": verb,
                "calls": calls.count,
                "fuel_used": result.fuel_used,
                "output_sha256": hashlib.sha256(result.output).hexdigest(),
                "log_lines": len(result.logs),
                "proposed": len(calls.proposals),
                "plan_id": plan["plan_id"] if plan else None,
            },
        )
        try:
            # What the plugin says goes back to the requester as JSON: no NaN,
            # no lone surrogate (neither can be answered); else it is text.
            parsed: Any = json.loads(output, parse_constant=_no_constant) if output else None
            if lone_surrogate(parsed):
                parsed = output
        except ValueError:
            parsed = output
        return {
            "run_id": run_id,
            **ident,
            "verb": verb,
            "output": parsed,
            "logs": result.logs,
            "calls": calls.count,
            "fuel_used": result.fuel_used,
            "plan": plan,
        }


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON a desktop can read")


def _ident(plugin: Plugin) -> dict[str, str]:
    """How the audit log names a plugin: name, version and module hash."""
    m = plugin.manifest
    return {"plugin": m.name, "version": m.version, "sha256": plugin.sha256}


class _Calls:
    """The host's answer to one run's ``call``: check, then act or propose."""

    def __init__(
        self, host: PluginHost, plugin: Plugin, run_id: str, requester: str, grant_source: str
    ):
        self.host = host
        self.plugin = plugin
        self.run_id = run_id
        self.requester = requester
        self.grant_source = grant_source
        self.limits = host.limits
        self.count = 0
        self.proposals: list[Intent] = []
        self.deadline = time.monotonic() + self.limits.seconds
        # File content this run read: anything it sends out afterwards could
        # carry it, so by default that needs a press (which a run cannot wait for).
        self.read_content = False

    def __call__(self, raw: bytes) -> bytes:
        self.count += 1
        if self.count > self.limits.calls:
            raise PluginStopped(
                f"the plugin made more than {self.limits.calls} host calls",
                code="plugin_call_limit",
            )
        if time.monotonic() > self.deadline:
            raise PluginStopped(
                f"the plugin ran for over {self.limits.seconds:g} s of wall-clock time",
                code="plugin_time_limit",
            )
        if len(raw) > MAX_CALL_BYTES:
            raise PluginStopped("a host call of over 4 MiB", code="plugin_bad_call")
        try:
            request = json.loads(raw)
            op, token = request["op"], request["token"]
            if not isinstance(op, str) or not isinstance(token, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise PluginStopped(
                'a host call must be a JSON object with "op" and "token"', code="plugin_bad_call"
            ) from None
        bad = lone_surrogate(request)
        if bad:
            raise PluginStopped(
                f"a host call must be proper Unicode: {bad}", code="plugin_bad_call"
            )
        # What the call names, for the log and the reason: a URL without its
        # query string (which could carry what the plugin read).
        what = str(request.get("resource") or request.get("url") or "").partition("?")[0][:200]
        try:
            if op == PLUGIN_HTTP_OP:
                answer = self._http(request, token)
            elif op in CALL_PARAMS:
                answer = self._file(op, request, token)
            else:
                raise PluginStopped(f"unknown host operation {op[:64]!r}", code="plugin_bad_call")
        except (ScopeError, TokenError) as e:
            self._refused(op, what, e)
        except (ExecutionError, NotFound) as e:
            if e.code == "needs_approval":
                # Not a failure of the plugin's, but a refusal all the same: on record.
                self._audit_refusal(op, what, e)
            return canonical_json({"ok": False, **e.to_dict()})
        return canonical_json({"ok": True, "result": answer})

    def _refused(self, op: str, what: str, e: ApplianceError) -> None:
        self._audit_refusal(op, what, e)
        raise PluginStopped(f"its {op} of {what!r} was refused: {e.reason}", code=e.code)

    def _audit_refusal(self, op: str, what: str, e: ApplianceError) -> None:
        self.host.audit.append(
            "plugin.call_refused",
            {
                "run_id": self.run_id,
                "plugin": self.plugin.manifest.name,
                "sha256": self.plugin.sha256,
                "op": op,
                "target": what,
                "error": e.to_dict(),
            },
        )

    def _verify(self, call: PluginCall, token: str) -> None:
        verify_plugin_call(
            self.host.tokens,
            token,
            run_id=self.run_id,
            plugin_sha256=self.plugin.sha256,
            grant_source=self.grant_source,
            call=call,
        )

    def _file(self, op: str, request: dict[str, Any], token: str) -> dict[str, Any]:
        host = self.host
        params = {k: request[k] for k in CALL_PARAMS[op] if k in request}
        target = host.shares.parse(request.get("resource"))  # lexical: .., NUL, absolute
        to = host.shares.parse(params["to"]) if op == "file.move" else target
        self._verify(PluginCall(op, share=target.share, to_share=to.share), token)
        write = op in PLUGIN_WRITE_OPS
        provenance = (
            {f: Provenance.content for f in ("resource", *(f"params.{k}" for k in params))}
            if write
            else {}
        )
        try:
            intent = Intent(
                verb=op, resource=target.canonical, params=params, provenance=provenance
            )
        except ValidationError as e:
            raise PluginStopped(
                f"its {op} call is not a valid intent: {e.errors()[0]['msg']}",
                code="plugin_bad_call",
            ) from None
        evaluated = host.evaluator.evaluate(intent, self.requester)  # scope walk + policy
        decision = evaluated.decision
        if decision.decision == "deny":
            raise ScopeError(" ".join(decision.reasons), code="denied")
        if write:
            if len(self.proposals) >= self.limits.proposals:
                raise PluginStopped(
                    f"the plugin proposed more than {self.limits.proposals} changes",
                    code="plugin_call_limit",
                )
            self.proposals.append(intent)
            return {"proposed": len(self.proposals), "decision": decision.decision}
        if decision.decision != "allow":
            raise ExecutionError(
                f"{op} {target.canonical} needs approval; a plugin run cannot wait for a press",
                code="needs_approval",
            )
        assert op in PLUGIN_READ_OPS
        if op == "file.read":
            self.read_content = True
        outcome = host.files.execute(op, host.shares.parse(evaluated.resource), params)
        host.audit.append(
            "plugin.call",
            {
                "run_id": self.run_id,
                "plugin": self.plugin.manifest.name,
                "op": op,
                "resource": evaluated.resource,
                "intent_digest": evaluated.digest,
                "rules": list(decision.rules),
            },
        )
        return outcome.result

    def _http(self, request: dict[str, Any], token: str) -> dict[str, Any]:
        url, method = request.get("url"), request.get("method", "GET")
        body = request.get("body", "")
        if not isinstance(url, str) or not isinstance(body, str) or method not in HTTP_METHODS:
            raise PluginStopped(
                f"an HTTP call needs a url, a method of {HTTP_METHODS} and a text body",
                code="plugin_bad_call",
            )
        bad = next((c for c in url if ord(c) < 0x21 or 0x7F <= ord(c) <= 0x9F), None)
        if bad is not None:
            raise ScopeError(
                f"not a plain http(s) URL: it holds U+{ord(bad):04X} at {url.index(bad)} "
                "(spaces and control characters must be percent-encoded)"
            )
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise ScopeError(f"{url[:200]!r} is not a plain http(s) URL")
        try:
            port = parts.port
        except ValueError:
            raise ScopeError(f"{url[:200]!r} has a bad port") from None
        origin = normalise_origin(
            f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")
        )
        self._verify(PluginCall(PLUGIN_HTTP_OP, host=origin), token)
        decision = self.host.evaluator.policy.decide(
            PolicyRequest(
                verb=NET_VERB,
                requester=self.requester,
                share=None,
                path=origin,
                after_read=self.read_content,
            )
        )
        if decision.decision == "deny":
            raise ScopeError(" ".join(decision.reasons), code="denied")
        if decision.decision != "allow":
            why = (
                " (it read file content in this run, which the request could carry)"
                if self.read_content
                else ""
            )
            raise ExecutionError(
                f"a request to {origin} needs approval{why}; a plugin run cannot wait for a press",
                code="needs_approval",
            )
        limit = self.limits.http_response_bytes
        address = remote_address(parts.hostname, port or (443 if parts.scheme == "https" else 80))
        headers = {
            "user-agent": f"appliance-plugin/{self.plugin.manifest.name}",
            "host": parts.netloc,
        }
        if body:
            headers["content-type"] = "application/json" if body[:1] in "{[" else "text/plain"
        try:
            with (
                httpx.Client(
                    timeout=self.limits.http_timeout_s, follow_redirects=False, trust_env=False
                ) as client,
                client.stream(
                    method,
                    pinned_url(parts, address),
                    content=body.encode(),
                    headers=headers,
                    # TLS checks the certificate against the name, not the address.
                    extensions={"sni_hostname": parts.hostname},
                ) as response,
            ):
                data = b""
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > limit:
                        break
                status = response.status_code
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            # InvalidURL is not an HTTPError: httpx refuses a URL before sending it.
            raise ExecutionError(
                f"the request to {origin} failed: {e}", code="http_failed"
            ) from None
        self.host.audit.append(
            "plugin.http",
            {
                "run_id": self.run_id,
                "plugin": self.plugin.manifest.name,
                "sha256": self.plugin.sha256,
                "method": method,
                "origin": origin,
                "path": parts.path[:200],
                # A secret in the query string leaves a trace too (its digest).
                "query_sha256": hashlib.sha256(parts.query.encode()).hexdigest()
                if parts.query
                else None,
                "after_read": self.read_content,
                "status": status,
                "request_sha256": hashlib.sha256(body.encode()).hexdigest(),
                "response_bytes": min(len(data), limit),
            },
        )
        return {
            "status": status,
            "body": data[:limit].decode("utf-8", "replace"),
            "truncated": len(data) > limit,
        }
