//! The top-level crate of the malicious-dep example.
//!
//! This file is itself a target: evil's build.rs tries to append to it and to
//! drop a `pwned.rs` next to it. If the farm mounts sources read-only, this
//! file is byte-identical after the build.

fn main() {
    // Output is fixed so tests can compare it exactly.
    println!(
        "malicious-dep: clean binary (adler32(\"farm\") = {:#010x})",
        evil::adler32(b"farm")
    );
}
