"""WebAssembly plugins: signed third-party actions in a wasmtime sandbox.

``package`` checks a plugin on disk (signature by a pinned publisher, module
hash, manifest); ``runtime`` runs it under fuel, memory and output limits;
``host`` is the broker's side of each host call (capability, scope, policy).
See docs/plugins.md.
"""
