"""The box's own console: the one screen a compromised desktop cannot fake.

Served by the broker at ``/`` (same process, same TLS certificate as the
LAN API; plain HTTP on loopback only in development). The console signs in
by pairing with an owner grant through the same physical press, and shows,
rendered by the box from its own state, exactly what a press would do (see
docs/console.md). Its pages use the LAN API's own functions; the API accepts
its session cookie as the console's credential.
"""
