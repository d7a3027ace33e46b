"""Cargo specifics: Cargo.lock reading (``lockfile``), safe .crate unpacking (``cratefile``)."""
