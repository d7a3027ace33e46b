"""Backends run a ``farm.sandbox.SandboxSpec``; see ``farm.sandbox.Backend``."""
