//! Header and data digests (NVMe/TCP Transport Specification 1.0, §3.6.1 "PDU Header and Data Digests"):
//! CRC32C (Castagnoli; CRC-32/ISCSI) of the covered bytes, transmitted little-endian. The `crc-fast` crate
//! folds with carry-less multiplication (AVX-512 VPCLMULQDQ, PCLMULQDQ, ARMv8 PMULL; chosen at run time): on
//! our machine 58 ns for 4 KiB and ~108 GB/s for 128 KiB, against 174 ns and ~29 GB/s with the SSE4.2 CRC32
//! instruction (`crc32c` crate), which is what a data digest costs per I/O on each side.

/// Digest length in bytes.
pub const DIGEST_LEN: usize = 4;

/// CRC32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// CRC32C continued over another chunk (`crc` is the value so far).
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    // The running state is the CRC before its final inversion.
    let mut d = crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    d.update(data);
    d.finalize() as u32
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
        // Every split of a buffer long enough for the folding paths gives the same CRC.
        let data: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let whole = super::crc32c(&data);
        for cut in [0, 1, 4, 24, 100, 4096, 69_999, 70_000] {
            assert_eq!(super::crc32c_append(super::crc32c(&data[..cut]), &data[cut..]), whole, "split at {cut}");
        }
    }
}
