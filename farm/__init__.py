"""farm: run untrusted builds in a gVisor sandbox with no network, and keep what they made.

Nothing happens at import time; see ``farm.cli`` for the entry point.
"""

__version__ = "0.1.0"
