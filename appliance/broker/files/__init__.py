"""The executor's file actions: each verb with its snapshot and its undo
(see ops.py for the rules every verb follows)."""

from appliance.broker.files.base import Outcome
from appliance.broker.files.ops import FileOps
from appliance.broker.files.undo import UndoRecord

__all__ = ["FileOps", "Outcome", "UndoRecord"]
