"""The executor's file actions: each verb with its undo record, what it
keeps for that undo (a trash item, a snapshot), and the identity checks an
undo by inverse relies on (see ops.py for the rules every verb follows)."""

from appliance.broker.files.base import Keeper, Kept, Outcome
from appliance.broker.files.identity import Identity
from appliance.broker.files.ops import FileOps
from appliance.broker.files.trash import TRASH_DIR
from appliance.broker.files.undo import UndoRecord

__all__ = ["TRASH_DIR", "FileOps", "Identity", "Keeper", "Kept", "Outcome", "UndoRecord"]
