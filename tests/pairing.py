"""A desktop paired straight in the client store, for tests that need a
paired requester but are not about pairing (no panel, no press)."""

from __future__ import annotations

from appliance.broker.grants import Grant
from appliance.broker.service import Broker


def credential(broker: Broker, name: str = "laptop", grant: Grant | None = None) -> str:
    """Pair a desktop (default grant: read and change every share); its credential."""
    grant = grant or Grant(write=frozenset(broker.config.shares))
    secret, ref = broker.clients.new_pairing(name, "test", grant)
    broker.clients.set_pairing_status(ref, "approved")
    out: str = broker.clients.deliver(secret)["credential"]
    return out


def paired(broker: Broker, name: str = "laptop", grant: Grant | None = None) -> str:
    """Pair a desktop (default grant: read and change every share); its client id."""
    return credential(broker, name, grant).partition(".")[0]
