//! Reading a fuzz input from the front, shared by the harnesses that decode a script from it.

/// The input not yet read.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// The next byte, or `None` at the end.
    pub fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    /// The next two bytes, little endian.
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    /// The next four bytes, little endian.
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([self.byte()?, self.byte()?, self.byte()?, self.byte()?]))
    }
    /// Where a data PDU goes and how long it is, as `mode` (a byte the script read) chooses: bit 0 clear at
    /// `next` (the offset in order), set at any 16-bit offset; bits 1-2: all of `rest`, up to 512 × (1 + bits
    /// 4-7) bytes of it, bits 4-7 dwords, or what `any` reads.
    pub fn offset_and_length(
        &mut self,
        mode: u8,
        next: usize,
        rest: usize,
        any: impl FnOnce(&mut Self) -> Option<usize>,
    ) -> Option<(usize, usize)> {
        let offset = if mode & 1 == 0 { next } else { self.u16()? as usize };
        let len = match (mode >> 1) & 3 {
            0 => rest,
            1 => rest.min(512 * (1 + (mode >> 4) as usize)),
            2 => (mode >> 4) as usize * 4,
            _ => any(self)?,
        };
        Some((offset, len))
    }
}
