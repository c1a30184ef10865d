"""The agent's refusals: every way the model side can fail is an ApplianceError.

The broker turns any of them into a failed task with nothing done.
"""

from __future__ import annotations

from appliance.errors import ApplianceError


class ModelError(ApplianceError):
    """A model cannot be used: its file is missing or tampered with, its
    manifest is incomplete, its runtime is not installed, or it produced
    output that stays invalid after the one repair attempt."""

    status = 502
    code = "model_error"


class AgentError(ApplianceError):
    """The broker could not get an answer from the agent process.

    Codes: ``agent_unavailable`` (503, nothing listens), ``agent_timeout``
    (504, no answer before the deadline), ``agent_failed`` (502, the agent
    crashed mid-request, answered garbage, or reported an error).
    """

    status = 502
    code = "agent_failed"


def unavailable(reason: str) -> AgentError:
    return AgentError(reason, code="agent_unavailable", status=503)


def timed_out(reason: str) -> AgentError:
    return AgentError(reason, code="agent_timeout", status=504)


def failed(reason: str) -> AgentError:
    return AgentError(reason, code="agent_failed", status=502)
