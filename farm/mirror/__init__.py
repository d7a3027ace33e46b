"""``farm mirror``: an offline, crates.io-compatible registry kept in one directory.

The directory is at once a sparse registry that ``farm.mirror.serve`` serves over HTTP
and a cargo ``local-registry`` (docs/mirror.md). ``store`` writes it, ``indexline``
derives cargo's index lines from a ``.crate``, ``layout`` names its files, ``fill``
adds crates from files, a Cargo.lock or Debian source packages, and ``debian`` reads
Debian's signed archive.
"""
