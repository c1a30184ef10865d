"""The safe agent appliance: broker, issuer, approval panel, executor and audit log."""

__version__ = "0.1.0"
