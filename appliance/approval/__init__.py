"""The approval room: the queue a person answers, the panel they answer on,
and the local control socket the CLI uses to reach the running broker."""

from .control import (
    BrokerNotRunning,
    ControlClient,
    ControlServer,
    ControlSocketInUse,
    peer_uid,
)
from .panel import Panel, VirtualPanel
from .queue import ApprovalQueue
from .types import (
    DECIDED,
    KINDS,
    PANEL_STATES,
    ApprovalRequest,
    Decision,
    Kind,
    PanelQueue,
    PanelState,
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
    "PanelQueue",
    "PanelState",
    "PressResult",
    "Status",
    "VirtualPanel",
    "peer_uid",
]
