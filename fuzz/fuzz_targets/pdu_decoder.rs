//! Fuzz the streaming PDU decoder: arbitrary bytes, arbitrary chunking, either role, before or after the
//! IC exchange, digests on or off. It must never panic and never buffer beyond the negotiated limits.
#![no_main]
use bytes::BytesMut;
use holdfast_proto::decoder::{Limits, PduDecoder, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (cfg, rest) = (data[0], &data[1..]);
    let role = if cfg & 1 == 0 { Role::Controller } else { Role::Host };
    let limits = Limits { max_incapsule: 8192, max_h2c_data: 16384, max_c2h_data: 16384 };
    let mut d = PduDecoder::new(role, limits);
    if cfg & 2 != 0 {
        d.set_negotiated(cfg & 4 != 0, cfg & 8 != 0, (cfg >> 4) & 0x7);
    }
    let chunk = 1 + data[1] as usize % 97;
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Bounded: at most one maximal PDU (header + pad + data + digests) is ever held.
        assert!(buf.len() <= 16384 + 256 + chunk, "buffered {} bytes", buf.len());
    }
});
