"""The approval room: the queue a person answers, the panel they answer on,
and the local control socket the CLI uses to reach the running broker."""

from .control import (
    BrokerNotRunning,
    ControlClient,
    ControlServer,
    ControlSocketInUse,
    peer_uid,
)
from .panel import PANEL_STATES, Panel, PanelState, PressFn, VirtualPanel
from .queue import (
    DECIDED,
    KINDS,
    ApprovalQueue,
    ApprovalRequest,
    Decision,
    Kind,
    PressResult,
    Status,
)

__all__ = [
    "DECIDED",
    "KINDS",
    "PANEL_STATES",
    "ApprovalQueue",
    "ApprovalRequest",
    "BrokerNotRunning",
    "ControlClient",
    "ControlServer",
    "ControlSocketInUse",
    "Decision",
    "Kind",
    "Panel",
    "PanelState",
    "PressFn",
    "PressResult",
    "Status",
    "VirtualPanel",
    "peer_uid",
]
