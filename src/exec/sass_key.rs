//! The key under which a PTX module's prebuilt SASS is found (`exec::cuda::sass`): the length
//! and the 64-bit FNV-1a hash of the PTX text. One implementation, shared by the build script
//! (which computes the keys of the PTX it compiles, `#[path]`-included there) and the CUDA
//! runtime (which computes the key of the PTX candle hands the driver); they must agree byte
//! for byte. A key that matches by accident would need two different PTX texts of the same
//! length with the same hash; the SASS is used only then, so a mismatch can only cost a JIT.

/// FNV-1a, 64 bits, over `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::fnv1a64;

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        // From the FNV reference test suite (draft-eastlake-fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
