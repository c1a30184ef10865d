"""Policy as code: Cedar policies decide allow, needs approval, or deny.

See docs/policy.md for the model and the default rules.
"""

from appliance.policy.cases import Case, CaseResult, load_cases, run_cases
from appliance.policy.engine import (
    CHANGE_VERBS,
    FILE_VERBS,
    KNOWN_VERBS,
    PAIR_VERB,
    UNDO_VERB,
    Decision,
    PolicyEngine,
    PolicyRequest,
    PolicyRule,
)

__all__ = [
    "Case",
    "CaseResult",
    "load_cases",
    "run_cases",
    "CHANGE_VERBS",
    "FILE_VERBS",
    "KNOWN_VERBS",
    "PAIR_VERB",
    "UNDO_VERB",
    "Decision",
    "PolicyEngine",
    "PolicyRequest",
    "PolicyRule",
]
