//! A deterministic, stable-Rust companion of the `pdu_decoder` fuzz target (`fuzz/`): the same properties over
//! many pseudo-random inputs, in `cargo test`.
//!
//! 1. Arbitrary bytes in arbitrary chunks, either role, before or after the IC exchange, any digests and PDA:
//!    the decoder never panics, never holds more than one maximal PDU, and the buffer's capacity stays bounded.
//! 2. Valid PDUs built from arbitrary field values round-trip through `Pdu::to_bytes` and the decoder (also
//!    concatenated and re-chunked) for every `Framing`: hdgst × ddgst × PDA 0..=31.

use bytes::{Bytes, BytesMut};
use holdfast_proto::cqe::CompletionEntry;
use holdfast_proto::pdu::{C2HData, CapsuleCmd, CapsuleResp, H2CData, IcReq, IcResp, TermReq, R2T};
use holdfast_proto::{DecodeError, Framing, Limits, Pdu, PduDecoder, Role, SubmissionEntry};
use proptest::prelude::*;
use zerocopy::FromBytes;

/// Small limits so that the bound is tested (inputs are up to a few KiB).
const LIMITS: Limits = Limits { max_incapsule: 1024, max_h2c_data: 2048, max_c2h_data: 4096 };

/// Largest PDU the decoder may wait for: data + PDO (a u8, so at most 255) + data digest.
fn max_pdu(l: &Limits) -> usize {
    l.max_incapsule.max(l.max_h2c_data).max(l.max_c2h_data) as usize + 255 + 4
}

/// Feed `bytes` in `chunks` (lengths, cycled); stop at the first error. Returns the PDUs decoded.
fn feed(d: &mut PduDecoder, bytes: &[u8], chunks: &[usize], limits: &Limits) -> Result<Vec<Pdu>, DecodeError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    let max_chunk = chunks.iter().copied().max().unwrap_or(1);
    for &c in chunks.iter().cycle() {
        if at >= bytes.len() {
            break;
        }
        let n = c.clamp(1, bytes.len() - at);
        buf.extend_from_slice(&bytes[at..at + n]);
        at += n;
        while let Some(p) = d.decode(&mut buf)? {
            out.push(p);
        }
        // Waiting for more: what is held is a prefix of one PDU whose length was checked against the limits.
        assert!(buf.len() < max_pdu(limits), "holding {} bytes", buf.len());
        // Capacity: our chunks plus one PDU, with Vec-style doubling, plus BytesMut's 64 KiB original-capacity
        // reuse after split_to.
        assert!(
            buf.capacity() <= 2 * (max_pdu(limits) + max_chunk) + 64 * 1024,
            "capacity {} after holding {} bytes",
            buf.capacity(),
            buf.len()
        );
    }
    Ok(out)
}

fn decoder(role: Role, negotiated: Option<(bool, bool, u8)>) -> PduDecoder {
    let mut d = PduDecoder::new(role, LIMITS);
    if let Some((h, dd, pda)) = negotiated {
        d.set_negotiated(h, dd, pda);
    }
    d
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}
fn arb_data(min: usize, max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), min..max).prop_map(Bytes::from)
}

fn arb_sqe() -> impl Strategy<Value = SubmissionEntry> {
    prop::collection::vec(any::<u8>(), 64).prop_map(|v| SubmissionEntry::read_from_bytes(&v[..]).unwrap())
}
fn arb_cqe() -> impl Strategy<Value = CompletionEntry> {
    prop::collection::vec(any::<u8>(), 16).prop_map(|v| CompletionEntry::read_from_bytes(&v[..]).unwrap())
}

/// PDUs that travel host -> controller after the IC exchange.
fn arb_h2c() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        (arb_sqe(), arb_bytes(LIMITS.max_incapsule as usize + 1))
            .prop_map(|(sqe, data)| Pdu::CapsuleCmd(CapsuleCmd { sqe, data })),
        (any::<u16>(), any::<u16>(), any::<u32>(), arb_data(1, LIMITS.max_h2c_data as usize + 1), any::<bool>())
            .prop_map(|(cccid, ttag, datao, data, last)| Pdu::H2CData(H2CData { cccid, ttag, datao, data, last })),
    ]
}

/// PDUs that travel controller -> host after the IC exchange.
fn arb_c2h() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        arb_cqe().prop_map(|cqe| Pdu::CapsuleResp(CapsuleResp { cqe })),
        (any::<u16>(), any::<u32>(), arb_data(1, 3000), any::<bool>(), any::<bool>()).prop_map(
            |(cccid, datao, data, last, success)| Pdu::C2HData(C2HData { cccid, datao, data, last, success })
        ),
        (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(cccid, ttag, r2to, r2tl)| Pdu::R2T(R2T {
            cccid,
            ttag,
            r2to,
            r2tl
        })),
    ]
}

fn arb_term() -> impl Strategy<Value = TermReq> {
    (any::<u16>(), any::<u32>(), arb_bytes(129)).prop_map(|(fes, fei, data)| TermReq { fes, fei, data })
}

fn arb_framing() -> impl Strategy<Value = Framing> {
    (any::<bool>(), any::<bool>(), 0u8..=31).prop_map(|(hdgst, ddgst, pda)| Framing { hdgst, ddgst, pda })
}

fn arb_chunks() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1usize..8, 1usize..200, 1usize..5000], 1..16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Garbage in: never a panic, never unbounded buffering; after an error the decoder stays failed.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..6000),
        chunks in arb_chunks(),
        host in any::<bool>(),
        negotiated in prop::option::of((any::<bool>(), any::<bool>(), any::<u8>())),
    ) {
        let role = if host { Role::Host } else { Role::Controller };
        let mut d = decoder(role, negotiated);
        if feed(&mut d, &bytes, &chunks, &LIMITS).is_err() {
            let mut b = BytesMut::from(&bytes[..]);
            prop_assert!(d.decode(&mut b).is_err(), "a failed decoder must keep failing");
        }
    }

    /// Garbage that starts like a PDU (a plausible common header with a random PLEN): the length checks are
    /// what is exercised here, so the header is shaped to reach them.
    #[test]
    fn plausible_headers_never_panic(
        ty in prop::sample::select(vec![0u8, 1, 2, 3, 4, 5, 6, 7, 9]),
        flags in any::<u8>(),
        pdo in any::<u8>(),
        plen in prop_oneof![0u32..200, 0u32..10_000, any::<u32>()],
        rest in prop::collection::vec(any::<u8>(), 0..5000),
        chunks in arb_chunks(),
        host in any::<bool>(),
        negotiated in prop::option::of((any::<bool>(), any::<bool>(), 0u8..=31)),
    ) {
        let role = if host { Role::Host } else { Role::Controller };
        let hlen = match ty { 0 | 1 => 128, 4 => 72, _ => 24 };
        let mut bytes = vec![ty, flags, hlen, pdo];
        bytes.extend_from_slice(&plen.to_le_bytes());
        bytes.extend_from_slice(&rest);
        let mut d = decoder(role, negotiated);
        let _ = feed(&mut d, &bytes, &chunks, &LIMITS);
    }

    /// Valid host -> controller PDUs round-trip for every framing, alone and back to back, in any chunking.
    #[test]
    fn h2c_roundtrip(framing in arb_framing(), pdus in prop::collection::vec(arb_h2c(), 1..6), chunks in arb_chunks()) {
        roundtrip(Role::Controller, framing, &pdus, &chunks)?;
    }

    /// Valid controller -> host PDUs round-trip for every framing.
    #[test]
    fn c2h_roundtrip(framing in arb_framing(), pdus in prop::collection::vec(arb_c2h(), 1..6), chunks in arb_chunks()) {
        roundtrip(Role::Host, framing, &pdus, &chunks)?;
    }

    /// ICReq / ICResp (before the exchange) and TermReqs (either state) round-trip; they never carry digests,
    /// whatever the framing.
    #[test]
    fn ic_and_termreq_roundtrip(
        framing in arb_framing(),
        pfv in any::<u16>(), pda in any::<u8>(), hd in any::<bool>(), dd in any::<bool>(), max in any::<u32>(),
        term in arb_term(),
        chunks in arb_chunks(),
    ) {
        let term = TermReq { data: term.data.slice(..term.data.len().min(128)), ..term };
        let ic_req = Pdu::IcReq(IcReq { pfv, hpda: pda, hdgst: hd, ddgst: dd, maxr2t: max });
        let ic_resp = Pdu::IcResp(IcResp { pfv, cpda: pda, hdgst: hd, ddgst: dd, maxh2cdata: max });
        for (role, ic, t) in [
            (Role::Controller, ic_req, Pdu::H2CTermReq(term.clone())),
            (Role::Host, ic_resp, Pdu::C2HTermReq(term.clone())),
        ] {
            let mut d = decoder(role, None);
            let got = feed(&mut d, &ic.to_bytes(&framing), &chunks, &LIMITS).expect("IC PDU");
            prop_assert_eq!(&got, &vec![ic.clone()]);
            for negotiated in [None, Some((framing.hdgst, framing.ddgst, framing.pda))] {
                let mut d = decoder(role, negotiated);
                let got = feed(&mut d, &t.to_bytes(&framing), &chunks, &LIMITS).expect("TermReq");
                prop_assert_eq!(&got, &vec![t.clone()]);
            }
        }
    }
}

fn roundtrip(role: Role, framing: Framing, pdus: &[Pdu], chunks: &[usize]) -> Result<(), TestCaseError> {
    let mut stream = Vec::new();
    for p in pdus {
        let b = p.to_bytes(&framing);
        // Alone, in one piece.
        let mut d = decoder(role, Some((framing.hdgst, framing.ddgst, framing.pda)));
        let mut buf = BytesMut::from(&b[..]);
        let got = d.decode(&mut buf).map_err(|e| TestCaseError::fail(format!("{e} for {p:?} with {framing:?}")))?;
        prop_assert_eq!(got.as_ref(), Some(p));
        prop_assert!(buf.is_empty());
        // Data is placed at the receiver's alignment.
        if b[3] != 0 {
            prop_assert_eq!(b[3] as usize % ((framing.pda as usize + 1) * 4), 0);
        }
        stream.extend_from_slice(&b);
    }
    // Back to back, chunked.
    let mut d = decoder(role, Some((framing.hdgst, framing.ddgst, framing.pda)));
    let got = feed(&mut d, &stream, chunks, &LIMITS).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    prop_assert_eq!(&got[..], pdus);
    Ok(())
}
