"""The broker's side of the agent socket.

Whatever goes wrong on the agent's side ends in an :class:`AgentError`, and
the broker turns it into a failed task with nothing done:

* ``agent_unavailable`` (503): nothing listens on the socket, or the process
  listening is not the agent (its SO_PEERCRED uid is not the agent's);
* ``agent_timeout`` (504): no complete answer before the deadline (a hung
  model, a stopped process);
* ``agent_failed`` (502): the agent closed the connection without answering
  (it crashed or was killed mid-request), answered something that is not a
  valid answer, or reported an error.

Answers are checked here before the broker sees them: a plan must validate as
:class:`appliance.intents.Plan` and name only the shares it was given; the
extracted values must be exactly the fields asked for, of their types. The
broker then treats the plan like any desktop's (scope, policy, approval).
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from appliance.agent.errors import AgentError, failed, timed_out, unavailable
from appliance.agent.protocol import MAX_RESPONSE, Peer, TooLarge, encode, peer_of
from appliance.intents import Plan
from appliance.names import lone_surrogate

_SHA256 = re.compile(r"[0-9a-f]{64}")


class AgentClient:
    def __init__(self, socket_path: Path, *, agent_uid: int | None = None, timeout_s: float = 120):
        self.socket_path = Path(socket_path)
        self.agent_uid = agent_uid
        self.timeout_s = timeout_s
        self.last_peer: Peer | None = None  # who answered last (recorded for the audit log)

    # -------------------------------------------------------------- transport
    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one request, return its ``result`` or raise AgentError."""
        deadline = time.monotonic() + self.timeout_s
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(min(5.0, self.timeout_s))
            try:
                sock.connect(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise unavailable(
                    f"the model agent is not running (nothing listens on {self.socket_path})"
                ) from None
            except PermissionError:
                raise unavailable(
                    f"the broker may not open the agent socket {self.socket_path}"
                ) from None
            except TimeoutError:
                raise timed_out(
                    "the model agent does not accept connections (busy or hung)"
                ) from None
            except OSError as e:
                raise unavailable(f"cannot reach the model agent: {e.strerror or e}") from None
            peer = peer_of(sock)
            self.last_peer = peer
            if self.agent_uid is not None and peer.uid != self.agent_uid:
                raise unavailable(
                    f"the process on {self.socket_path} runs as uid {peer.uid}, not as the "
                    f"agent's uid {self.agent_uid}; not talking to it"
                )
            try:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock.sendall(encode(payload))
                line = self._read(sock, deadline)
            except TimeoutError:
                raise timed_out(
                    f"the model agent gave no answer within {self.timeout_s:g} s"
                ) from None
            except (ConnectionResetError, BrokenPipeError):
                raise failed("the model agent dropped the connection mid-request") from None
            except TooLarge:
                raise failed(f"the model agent's answer is over {MAX_RESPONSE} bytes") from None
        finally:
            sock.close()
        if line is None:
            raise failed("the model agent closed the connection without answering (it crashed?)")
        try:
            # No NaN or Infinity, no lone surrogate: what the agent says may be
            # shown to a desktop, as JSON, and neither can be.
            answer = json.loads(line, parse_constant=_not_json)
        except ValueError:
            raise failed("the model agent answered something that is not JSON") from None
        if lone_surrogate(answer):
            raise failed("the model agent answered text that is not valid Unicode")
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            raise failed("the model agent's answer has no ok field")
        if not answer["ok"]:
            error = answer.get("error")
            if not isinstance(error, dict):
                error = {}
            code = str(error.get("code", "?"))[:64]
            reason = str(error.get("reason", "no reason given"))[:500]
            err = failed(f"the model agent could not do it ({code}): {reason}")
            err.agent_code = code  # type: ignore[attr-defined]
            raise err
        result = answer.get("result")
        if not isinstance(result, dict):
            raise failed("the model agent's answer has no result")
        return result

    @staticmethod
    def _read(sock: socket.socket, deadline: float) -> bytes | None:
        buf = bytearray()
        while True:
            i = buf.find(b"\n")
            if i != -1:
                return bytes(buf[:i])
            if len(buf) > MAX_RESPONSE:
                raise TooLarge
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                return None  # EOF before a whole line: the agent went away
            buf += chunk

    # -------------------------------------------------------------- operations
    def health(self) -> dict[str, Any]:
        result = self.request({"op": "health"})
        _check_model(result)
        return result

    def plan(self, text: str, listing: dict[str, list[str]]) -> dict[str, Any]:
        """A plan for ``text`` over ``listing``: a PlanResult as a dict whose
        intents validate and stay inside the listed shares."""
        result = self.request({"op": "plan", "text": text, "listing": listing})
        _check_model(result)
        _check_proposal(result)
        if result["kind"] != "plan":
            if result.get("intents"):
                raise failed(f"the model agent's {result['kind']} carries intents")
            return result
        try:
            Plan.model_validate({"intents": result.get("intents")})
        except ValidationError as e:
            first = e.errors()[0]
            raise failed(
                f"the model agent's plan is not a valid plan of intents: {first.get('msg')}"
            ) from None
        for intent in result["intents"]:
            for value in (intent["resource"], intent.get("params", {}).get("to")):
                if value is None:
                    continue
                share = str(value).removeprefix("share:").partition("/")[0]
                if not str(value).startswith("share:") or share not in listing:
                    raise failed(f"the model agent's plan names {value!r}, outside the shares")
        return result

    def extract(self, content: str, fields: dict[str, str]) -> dict[str, Any]:
        """Values for ``fields`` read from ``content``: exactly those fields, of
        their types (or null). Data, never intents."""
        result = self.request({"op": "extract", "content": content, "fields": fields})
        _check_model(result)
        values = result.get("values")
        if not isinstance(values, dict) or set(values) != set(fields):
            raise failed("the model agent's values are not exactly the fields asked for")
        for name, kind in fields.items():
            v = values[name]
            ok = (
                v is None
                or (kind == "integer" and isinstance(v, int) and not isinstance(v, bool))
                or (kind in ("string", "date") and isinstance(v, str))
            )
            if not ok:
                raise failed(f"the model agent's value for {name} is not a {kind}")
        return result


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


EXPLANATION_MAX = 400  # characters of the model's explanation, question or reason
COMPACT_MAX = 8000  # characters of the compact form kept with a plan


def _check_proposal(result: dict[str, Any]) -> None:
    """The plan's kind, the model's own words and its confidence, bounded:
    they are shown to a person beside the plan and kept with the task."""
    result.setdefault("kind", "plan")
    if result["kind"] not in ("plan", "question", "refusal"):
        raise failed(f"the model agent's answer is of an unknown kind {result['kind']!r}")
    explanation = result.setdefault("explanation", "")
    compact = result.setdefault("compact", "")
    if not isinstance(explanation, str) or len(explanation) > EXPLANATION_MAX:
        raise failed("the model agent's explanation is not a short text")
    if result["kind"] != "plan" and not explanation.strip():
        raise failed(f"the model agent's {result['kind']} says nothing")
    if not isinstance(compact, str) or len(compact) > COMPACT_MAX:
        raise failed("the model agent's compact plan is not a bounded text")
    conf = result.get("confidence")
    if conf is not None and not (
        isinstance(conf, int | float) and not isinstance(conf, bool) and 0 <= conf <= 1
    ):
        raise failed("the model agent's confidence is not a number from 0 to 1")


def _check_model(result: dict[str, Any]) -> None:
    if not isinstance(result.get("model_id"), str) or not _SHA256.fullmatch(
        str(result.get("model_sha256", ""))
    ):
        raise failed("the model agent's answer does not name its model and hash")


__all__ = ["AgentClient", "AgentError"]
