"""Verified dependency layers: a project's dependencies built once, alone, in a clean
observed sandbox, and mounted read-only (copy-on-write) under later builds' target/.
See docs/layers.md."""
