//! Header and data digests (NVMe/TCP Transport Specification 1.0, §3.6.1 "PDU Header and Data Digests"):
//! CRC32C (Castagnoli) of the covered bytes, transmitted little-endian. The `crc32c` crate uses the SSE4.2 /
//! ARMv8 CRC instructions when the CPU has them.

/// Digest length in bytes.
pub const DIGEST_LEN: usize = 4;

/// CRC32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// CRC32C continued over another chunk (`crc` is the value so far).
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// The 4 digest bytes as they go on the wire.
#[inline]
pub fn digest_bytes(data: &[u8]) -> [u8; DIGEST_LEN] {
    crc32c(data).to_le_bytes()
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C ("123456789" -> 0xE3069283, RFC 3720 Appendix B.4).
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(super::crc32c_append(super::crc32c(b"1234"), b"56789"), 0xE306_9283);
    }
}
