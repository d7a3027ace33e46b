"""The fetch phase: a source's lockfile in, verified and vendored dependencies out, before
any sandbox exists and without running any third-party code (``farm.fetch.phase``).
The registry client is ``farm.fetch.registry``, the shared crate cache ``farm.fetch.cache``.
"""
