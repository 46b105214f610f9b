//! Fuzz the streaming PDU decoder: arbitrary bytes, arbitrary chunking, either role, before or after the IC
//! exchange, digests on or off. It must never panic, never hold more than one maximal PDU, and keep the
//! receive buffer's capacity bounded. Decoded PDUs must re-encode to bytes the decoder accepts again.
//!
//! Input: byte 0 = configuration (bit 0: role Host; bit 1: start after IC; bits 2/3: header/data digest;
//! bit 4: take the digests from the IC PDU the stream carries; bits 5-7: PDA / 4), byte 1 = chunking seed (its
//! low 2 bits: PDA % 4), the rest = the stream, cut into chunks of 1..=70000 bytes drawn from the seed.
#![no_main]
use bytes::BytesMut;
use holdfast_proto::decoder::{peek_capsule_sqes, DecodeError, Limits, PduDecoder, Role};
use holdfast_proto::pdu::{Framing, Pdu};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { max_incapsule: 8192, max_h2c_data: 16384, max_c2h_data: 65536 };
/// Largest PDU: data + PDO (a u8) + data digest.
const MAX_PDU: usize = 65536 + 255 + 4;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (cfg, seed, stream) = (data[0], data[1], &data[2..]);
    let role = if cfg & 1 == 0 { Role::Controller } else { Role::Host };
    let (hd, dd) = (cfg & 4 != 0, cfg & 8 != 0);
    let pda = (cfg >> 5) * 4 + (seed & 3); // 0..=31
    let mut d = PduDecoder::new(role, LIMITS);
    let mut framing = Framing { hdgst: hd, ddgst: dd, pda };
    if cfg & 2 != 0 {
        d.set_negotiated(hd, dd, pda);
    }
    let mut rng = seed as u32 | 0x100;
    let mut next_chunk = || {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        match rng % 4 {
            0 => 1 + (rng >> 8) as usize % 4,
            1 => 1 + (rng >> 8) as usize % 64,
            2 => 1 + (rng >> 8) as usize % 1024,
            _ => 1 + (rng >> 8) as usize % 70_000,
        }
    };
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut max_chunk = 0;
    while at < stream.len() {
        let n = next_chunk().min(stream.len() - at);
        max_chunk = max_chunk.max(n);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        // The look-ahead a target does before decoding a batch: it must end, and never panic.
        let _ = peek_capsule_sqes(&buf).count();
        loop {
            match d.decode(&mut buf) {
                Ok(Some(pdu)) => {
                    if let Pdu::IcReq(ic) = &pdu {
                        if cfg & 16 != 0 {
                            framing = Framing { hdgst: ic.hdgst, ddgst: ic.ddgst, pda: 0 };
                        }
                    }
                    if let Pdu::IcResp(ic) = &pdu {
                        if cfg & 16 != 0 {
                            framing = Framing { hdgst: ic.hdgst, ddgst: ic.ddgst, pda: 0 };
                        }
                    }
                    if matches!(pdu, Pdu::IcReq(_) | Pdu::IcResp(_)) {
                        d.set_negotiated(framing.hdgst, framing.ddgst, framing.pda);
                    }
                    check_reencode(role, &framing, &pdu);
                }
                Ok(None) => break,
                Err(DecodeError::DataDigest { .. }) => continue, // the PDU was consumed; the connection lives
                Err(DecodeError::Fatal(_)) => {
                    // A failed decoder stays failed.
                    assert!(d.decode(&mut buf).is_err());
                    return;
                }
            }
        }
        assert!(buf.len() < MAX_PDU, "holding {} bytes", buf.len());
        assert!(
            buf.capacity() <= 2 * (MAX_PDU + max_chunk) + 64 * 1024,
            "capacity {} holding {} bytes",
            buf.capacity(),
            buf.len()
        );
    }
});

/// A decoded PDU, encoded again with the decoder's framing, decodes to the same PDU.
fn check_reencode(role: Role, framing: &Framing, pdu: &Pdu) {
    let bytes = pdu.to_bytes(framing);
    let mut d = PduDecoder::new(role, LIMITS);
    if !matches!(pdu, Pdu::IcReq(_) | Pdu::IcResp(_)) {
        d.set_negotiated(framing.hdgst, framing.ddgst, framing.pda);
    }
    let mut b = BytesMut::from(&bytes[..]);
    match d.decode(&mut b) {
        Ok(Some(p)) => assert_eq!(&p, pdu),
        other => panic!("re-encoded {pdu:?} with {framing:?} does not decode: {other:?}"),
    }
    assert!(b.is_empty());
}
