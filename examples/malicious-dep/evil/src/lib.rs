//! The harmless public face of `evil`: an Adler-32 checksum.
//!
//! Nothing in this library is influenced by what build.rs found, so the final
//! binary never carries secrets even when the build script could read them.

/// Adler-32 checksum as defined in RFC 1950.
pub fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % MOD;
        b = (b + a) % MOD;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_vector() {
        // Reference value from RFC 1950 / zlib.
        assert_eq!(super::adler32(b"Wikipedia"), 0x11E6_0398);
    }
}
