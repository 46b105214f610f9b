//! [`Reassembly`]: a command's data arriving in one or more data PDUs (C2HData at the host, H2CData at
//! the controller; NVMe/TCP 1.0 §3.6.2.7–§3.6.2.8).
//!
//! Most transfers fit one PDU: its data is kept as the [`Bytes`] the decoder produced (a slice of the
//! receive buffer), never copied. A transfer split over several PDUs is gathered into a buffer of its own
//! from its first PDU on: a first piece kept as a slice would keep the whole receive buffer it lies in
//! alive (64 KiB or more) until the transfer ends, so that a peer sending a few bytes of each of many
//! transfers could make the other side hold far more memory than the transfers' lengths add up to.
//! Offsets are checked by the caller, which knows the PDU's DATAO.

use bytes::{Bytes, BytesMut};

/// Data received so far for one command.
#[derive(Debug, Default)]
pub enum Reassembly {
    /// Nothing yet.
    #[default]
    Empty,
    /// One PDU's data, as received.
    One(Bytes),
    /// Several PDUs' data, gathered.
    Many(BytesMut),
}

impl Reassembly {
    /// Bytes received.
    pub fn len(&self) -> usize {
        match self {
            Reassembly::Empty => 0,
            Reassembly::One(b) => b.len(),
            Reassembly::Many(b) => b.len(),
        }
    }

    /// Nothing received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append the next PDU's data; `total` is the transfer's length (the buffer size when gathering).
    pub fn push(&mut self, data: Bytes, total: usize) {
        match self {
            Reassembly::Empty if data.len() >= total => *self = Reassembly::One(data),
            Reassembly::Empty => {
                let mut m = BytesMut::with_capacity(total);
                m.extend_from_slice(&data);
                *self = Reassembly::Many(m);
            }
            Reassembly::One(first) => {
                let mut m = BytesMut::with_capacity(total.max(first.len() + data.len()));
                m.extend_from_slice(first);
                m.extend_from_slice(&data);
                *self = Reassembly::Many(m);
            }
            Reassembly::Many(m) => m.extend_from_slice(&data),
        }
    }

    /// The data, contiguous.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Reassembly::Empty => Bytes::new(),
            Reassembly::One(b) => b,
            Reassembly::Many(m) => m.freeze(),
        }
    }

    /// The data zero-padded (or cut) to `len` bytes.
    pub fn into_padded(self, len: usize) -> Bytes {
        if self.len() == len {
            return self.into_bytes();
        }
        let mut m = BytesMut::with_capacity(len);
        m.extend_from_slice(&self.into_bytes());
        m.resize(len, 0);
        m.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pdu_is_not_copied_and_several_are_gathered() {
        let a = Bytes::from(vec![1u8; 100]);
        let mut r = Reassembly::default();
        assert!(r.is_empty());
        r.push(a.clone(), 100);
        assert_eq!(r.len(), 100);
        let out = r.into_bytes();
        assert_eq!(out.as_ptr(), a.as_ptr());

        // A first piece is copied out at once: a slice would hold its whole receive buffer.
        let big = Bytes::from(vec![7u8; 4096]);
        let mut r = Reassembly::default();
        r.push(big.slice(..3), 8);
        assert!(matches!(&r, Reassembly::Many(m) if m.capacity() >= 8 && m.as_ptr() != big.as_ptr()));

        let mut r = Reassembly::default();
        r.push(Bytes::from_static(b"abc"), 8);
        r.push(Bytes::from_static(b"def"), 8);
        r.push(Bytes::from_static(b"gh"), 8);
        assert_eq!(r.len(), 8);
        assert_eq!(&r.into_bytes()[..], b"abcdefgh");
    }

    #[test]
    fn padding() {
        let mut r = Reassembly::default();
        r.push(Bytes::from_static(b"ab"), 4);
        assert_eq!(&r.into_padded(4)[..], b"ab\0\0");
        assert_eq!(&Reassembly::Empty.into_padded(2)[..], b"\0\0");
    }
}
