"""The model agent: its own unprivileged process, no network, one Unix socket.

It turns a request in words plus file names into a plan of intents
(:mod:`planner`), extracts typed values from content in a separate,
quarantined call, and answers the broker over :mod:`server` /
:mod:`client`. Model backends (:mod:`backends`) sit behind one seam;
manifests (:mod:`models`) say which model file, with which sha256.

Importing this package imports no model runtime: llama.cpp and HailoRT load
only when a backend is made.
"""

from appliance.agent.errors import AgentError, ModelError

__all__ = ["AgentError", "ModelError"]
