"""``farm mirror``: an offline, crates.io-compatible registry kept in one directory.

The directory is at once a sparse registry that ``serve`` serves over HTTP and a cargo
``local-registry`` (docs/mirror.md). Modules, from the bottom up: ``layout`` (names and
paths, validated), ``indexline`` (cargo's index line from a crate's Cargo.toml),
``store`` (``Mirror``: the write API), ``download`` (one bounded HTTP GET),
``debindex`` (the one reader of Debian's indexes: gpgv on InRelease, its suite and
SHA256 pins, size and sha256 checks, bounded xz, deb822 paragraphs), ``debian``
(Debian's Sources and orig tarballs, through ``debindex``), ``fill`` (``farm mirror add`` from
files, a Cargo.lock or Debian sources), ``serve`` (the HTTP server) and ``command``
(the CLI subcommands, added by ``farm.cli``). The Debian-derived tier: ``debarchive``
(Debian's Packages and Sources indexes, cached by path, through ``debindex``) and ``debian_binary``
(librust-*-dev closures repacked into crates, origin ``debian-derived``).
"""
