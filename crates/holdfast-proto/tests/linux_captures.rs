//! Golden tests from real Linux traffic: the Linux 6.1 kernel NVMe/TCP host (nvme-tcp, nvme-cli 2.3) talking
//! to the Linux 6.1 kernel target (nvmet-tcp), captured in `/work/shared/captures/` (see its README).
//!
//! `tests/data/linux/` holds the TCP payload of every connection of two captures, one file per direction:
//!
//! | prefix | capture |
//! |---|---|
//! | `plain-*` | `linux-host-linux-target.pcap`: no digests, 512 B blocks |
//! | `dgst-*` | `linux-host-linux-target-digests-4k.pcap`: header and data digests, 4 KiB blocks (discovery without) |
//!
//! and for each: `discovery` (`nvme discover`), `admin` (the admin queue of `nvme connect`), `io1` and `io2`
//! (the two I/O queues: `plain-io2` / `dgst-io2` carry the 4 KiB in-capsule write, the 128 KiB write by R2T +
//! H2CData, and reads by C2HData). `-h2c` is what the host sent, `-c2h` what the controller sent. The files
//! were extracted with
//! `tshark -r F.pcap -o tcp.relative_sequence_numbers:FALSE -T fields -e tcp.stream -e tcp.srcport -e tcp.seq
//! -e tcp.len -e tcp.payload -Y 'tcp.len>0'` and concatenating each direction's payloads in sequence order
//! (the captures are on loopback: no loss, no retransmission, every stream is contiguous and complete).
//!
//! Each stream is fed through [`PduDecoder`] in pseudo-random chunks; every byte must be consumed into PDUs
//! without error, and re-encoding each PDU with the negotiated [`Framing`] must give back Linux's bytes
//! exactly: a golden-byte check of our encoder against an independent implementation.

use bytes::BytesMut;
use holdfast_proto::fabrics::{nqn_from_field, ConnectCommand, ConnectData, DISCOVERY_NQN};
use holdfast_proto::opcode;
use holdfast_proto::pdu::{flags, Pdu};
use holdfast_proto::{Framing, Limits, PduDecoder, Role};
use zerocopy::FromBytes;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/linux");

fn load(name: &str) -> Vec<u8> {
    let p = format!("{DATA}/{name}.bin");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// A tiny deterministic PRNG (xorshift64*) so that chunkings differ per stream and seed but never per run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A chunk length: mostly small (to split headers and digests), sometimes large.
    fn chunk(&mut self) -> usize {
        let r = self.next();
        match r % 4 {
            0 => 1 + (r >> 8) as usize % 8,
            1 => 1 + (r >> 8) as usize % 100,
            2 => 1 + (r >> 8) as usize % 1500,
            _ => 1 + (r >> 8) as usize % 70_000,
        }
    }
}

/// Generous limits: bigger than anything in the captures (the 128 KiB write goes in one H2CData PDU).
fn limits() -> Limits {
    Limits { max_incapsule: 64 * 1024, max_h2c_data: 4 * 1024 * 1024, max_c2h_data: 4 * 1024 * 1024 }
}

/// One decoded PDU with the exact bytes it came from.
struct Decoded {
    pdu: Pdu,
    wire: Vec<u8>,
}

/// Decode a whole stream in chunks drawn from `seed`. Returns the PDUs and the Framing the IC exchange set.
/// `peer_ic` is the IC PDU of the other direction (the one that grants the digests), decoded by the caller.
fn decode_stream(bytes: &[u8], role: Role, seed: u64, granted: (bool, bool)) -> Vec<Decoded> {
    let mut d = PduDecoder::new(role, limits());
    let mut rng = Rng(seed | 1);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    // Position in `bytes` of the first byte still in `buf`, to recover each PDU's wire bytes.
    let mut start = 0usize;
    let mut fed = 0usize;
    while fed < bytes.len() {
        let n = rng.chunk().min(bytes.len() - fed);
        buf.extend_from_slice(&bytes[fed..fed + n]);
        fed += n;
        loop {
            let before = buf.len();
            match d.decode(&mut buf) {
                Ok(Some(pdu)) => {
                    let used = before - buf.len();
                    let wire = bytes[start..start + used].to_vec();
                    start += used;
                    if matches!(pdu, Pdu::IcReq(_) | Pdu::IcResp(_)) {
                        // CPDA/HPDA are 0 in every capture: Linux asks for no alignment.
                        d.set_negotiated(granted.0, granted.1, 0);
                    }
                    out.push(Decoded { pdu, wire });
                }
                Ok(None) => break,
                Err(e) => panic!("decode error at stream offset {start} (seed {seed}): {e}"),
            }
        }
    }
    assert!(buf.is_empty(), "{} bytes left over at the end of the stream", buf.len());
    assert_eq!(start, bytes.len());
    out
}

/// The digests the controller granted, from the first PDU of the controller->host stream (ICResp).
fn granted(c2h: &[u8]) -> (bool, bool) {
    assert_eq!(c2h[0], 0x01, "the controller's stream starts with ICResp");
    (c2h[11] & 1 != 0, c2h[11] & 2 != 0)
}

/// Re-encode every PDU and compare with Linux's bytes.
fn check_reencode(name: &str, pdus: &[Decoded], framing: Framing) {
    for (i, d) in pdus.iter().enumerate() {
        let again = d.pdu.to_bytes(&framing);
        if again[..] != d.wire[..] {
            let first = again.iter().zip(&d.wire).position(|(a, b)| a != b).unwrap_or(again.len().min(d.wire.len()));
            panic!(
                "{name}: PDU #{i} ({:?}) re-encodes differently (first difference at byte {first}; ours {} bytes, \
                 Linux {} bytes)\n  ours:  {}\n  linux: {}",
                d.pdu.pdu_type(),
                again.len(),
                d.wire.len(),
                hex(&again[..again.len().min(96)]),
                hex(&d.wire[..d.wire.len().min(96)]),
            );
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// Both directions of one connection, decoded and checked.
struct Conn {
    h2c: Vec<Decoded>,
    c2h: Vec<Decoded>,
    granted: (bool, bool),
}

fn connection(name: &str) -> Conn {
    let h2c_bytes = load(&format!("{name}-h2c"));
    let c2h_bytes = load(&format!("{name}-c2h"));
    let g = granted(&c2h_bytes);
    let framing = Framing { hdgst: g.0, ddgst: g.1, pda: 0 };
    let mut h2c = Vec::new();
    let mut c2h = Vec::new();
    // Several chunkings per stream: the result must not depend on how TCP split the bytes.
    for seed in [1u64, 0x9E37_79B9_7F4A_7C15, 0xDEAD_BEEF, 42] {
        let a = decode_stream(&h2c_bytes, Role::Controller, seed ^ name.len() as u64, g);
        let b = decode_stream(&c2h_bytes, Role::Host, seed.rotate_left(17), g);
        if !h2c.is_empty() {
            assert!(
                a.iter().zip(&h2c).all(|(x, y): (&Decoded, &Decoded)| x.pdu == y.pdu),
                "{name}: chunking changed h2c PDUs"
            );
            assert!(
                b.iter().zip(&c2h).all(|(x, y): (&Decoded, &Decoded)| x.pdu == y.pdu),
                "{name}: chunking changed c2h PDUs"
            );
        }
        h2c = a;
        c2h = b;
    }
    // Byte by byte once, too (the worst case for a streaming decoder).
    let one: Vec<Decoded> = {
        let mut d = PduDecoder::new(Role::Controller, limits());
        let mut buf = BytesMut::new();
        let mut v = Vec::new();
        for &x in &h2c_bytes {
            buf.extend_from_slice(&[x]);
            if let Some(p) = d.decode(&mut buf).expect("byte-by-byte decode") {
                if matches!(p, Pdu::IcReq(_)) {
                    d.set_negotiated(g.0, g.1, 0);
                }
                v.push(Decoded { pdu: p, wire: Vec::new() });
            }
        }
        assert!(buf.is_empty());
        v
    };
    assert_eq!(one.len(), h2c.len());
    assert!(one.iter().zip(&h2c).all(|(x, y)| x.pdu == y.pdu));

    check_reencode(&format!("{name}-h2c"), &h2c, framing);
    check_reencode(&format!("{name}-c2h"), &c2h, framing);
    Conn { h2c, c2h, granted: g }
}

/// The Connect capsule that opens every queue: opcode 0x7F, FCTYPE 1, 1024 bytes in-capsule.
fn connect_of(c: &Conn) -> (ConnectCommand, ConnectData) {
    let Pdu::CapsuleCmd(cap) = &c.h2c[1].pdu else { panic!("second h2c PDU is not a capsule: {:?}", c.h2c[1].pdu) };
    assert_eq!(cap.sqe.opcode, opcode::FABRICS);
    assert_eq!(cap.sqe.fctype(), 0x01, "Connect");
    assert_eq!(cap.data.len(), 1024, "Connect data is in-capsule");
    let cmd = ConnectCommand::from_sqe(&cap.sqe);
    let data = ConnectData::read_from_bytes(&cap.data[..]).expect("1024-byte Connect data");
    assert_eq!(cmd.sgl1.id, holdfast_proto::sgl::ID_INCAPSULE, "SGL1: in-capsule Data Block, Offset subtype");
    assert_eq!(cmd.sgl1.length.get(), 1024);
    (cmd, data)
}

/// Facts every connection shares: ICReq then Connect; ICResp from nvmet; the Connect's response.
fn common_facts(c: &Conn, want_digests: (bool, bool)) {
    let Pdu::IcReq(req) = c.h2c[0].pdu else { panic!("first h2c PDU is not ICReq") };
    assert_eq!(req.pfv, 0);
    assert_eq!(req.hpda, 0, "Linux asks for no data alignment");
    assert_eq!(req.maxr2t, 0, "Linux: one outstanding R2T per command (0's based)");
    assert_eq!((req.hdgst, req.ddgst), want_digests);
    let Pdu::IcResp(resp) = c.c2h[0].pdu else { panic!("first c2h PDU is not ICResp") };
    assert_eq!(resp.pfv, 0);
    assert_eq!(resp.cpda, 0, "nvmet: CPDA 0");
    assert_eq!(resp.maxh2cdata, 0x40_0000, "nvmet: MAXH2CDATA 4 MiB");
    assert_eq!((resp.hdgst, resp.ddgst), want_digests, "nvmet grants what was asked");
    assert_eq!(c.granted, want_digests);

    // The Connect's response is the first capsule response and carries the CNTLID in DW0.
    let (_, cdata) = connect_of(c);
    let Pdu::CapsuleCmd(cap) = &c.h2c[1].pdu else { unreachable!() };
    let Pdu::CapsuleResp(r) = &c.c2h[1].pdu else { panic!("second c2h PDU is not a response") };
    assert_eq!(r.cqe.cid.get(), cap.sqe.cid());
    assert_eq!(r.cqe.status.get() >> 1, 0, "Connect succeeded");
    let cntlid = holdfast_proto::fabrics::connect_result_cntlid(r.cqe.dw0.get());
    if cdata.cntlid.get() != 0xFFFF {
        assert_eq!(cntlid, cdata.cntlid.get(), "I/O queue Connect names the admin queue's controller");
    }

    // Digest flags on every digestible PDU agree with the grant.
    for d in c.h2c.iter().chain(&c.c2h) {
        let fl = d.wire[1];
        if !matches!(d.pdu, Pdu::IcReq(_) | Pdu::IcResp(_)) {
            assert_eq!(fl & flags::HDGSTF != 0, want_digests.0);
        }
    }
}

fn hostnqn(d: &ConnectData) -> String {
    nqn_from_field(&d.hostnqn).unwrap().to_string()
}

fn run_capture(prefix: &str, io_digests: (bool, bool)) {
    let disc = connection(&format!("{prefix}-discovery"));
    // Discovery runs without digests even when the I/O connection asks for them (nvme-cli's discover).
    common_facts(&disc, (false, false));
    // ICReq + 16 capsules one way, ICResp + 16 responses + 4 C2HData the other (counted independently).
    assert_eq!((disc.h2c.len(), disc.c2h.len()), (17, 21));
    let (dcmd, ddata) = connect_of(&disc);
    assert_eq!(dcmd.qid.get(), 0);
    assert_eq!(dcmd.kato.get(), 0, "nvme discover: no keep-alive");
    assert_eq!(nqn_from_field(&ddata.subnqn).unwrap(), DISCOVERY_NQN);
    assert_eq!(ddata.cntlid.get(), 0xFFFF);
    // The discovery log page is read (Get Log Page 0x02, LID 0x70) and comes back in C2HData.
    assert!(disc.h2c.iter().any(|d| matches!(&d.pdu, Pdu::CapsuleCmd(c)
        if c.sqe.opcode == opcode::admin::GET_LOG_PAGE && c.sqe.cdws()[0] & 0xFF == 0x70)));
    assert!(disc.c2h.iter().any(|d| matches!(d.pdu, Pdu::C2HData(_))));

    let admin = connection(&format!("{prefix}-admin"));
    common_facts(&admin, io_digests);
    let (acmd, adata) = connect_of(&admin);
    assert_eq!(acmd.qid.get(), 0);
    assert_eq!(acmd.kato.get(), 5000, "nvme connect -k 5");
    assert_eq!(nqn_from_field(&adata.subnqn).unwrap(), "nqn.2014-08.org.kernel:interop");
    assert_eq!(adata.cntlid.get(), 0xFFFF, "dynamic controller");
    assert!(hostnqn(&adata).starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
    let Pdu::CapsuleResp(r) = &admin.c2h[1].pdu else { unreachable!() };
    let cntlid = holdfast_proto::fabrics::connect_result_cntlid(r.cqe.dw0.get());
    // The Linux host's admin queue: Identify Controller is the first command after the property dance.
    let first_admin = admin.h2c.iter().find_map(|d| match &d.pdu {
        Pdu::CapsuleCmd(c) if c.sqe.opcode != opcode::FABRICS => Some(c.sqe.opcode),
        _ => None,
    });
    assert_eq!(first_admin, Some(opcode::admin::IDENTIFY));
    // Keep-alive-free session: no TermReq anywhere.
    assert!(!admin.h2c.iter().chain(&admin.c2h).any(|d| matches!(d.pdu, Pdu::H2CTermReq(_) | Pdu::C2HTermReq(_))));

    for (i, q) in ["io1", "io2"].iter().enumerate() {
        let io = connection(&format!("{prefix}-{q}"));
        common_facts(&io, io_digests);
        let (cmd, data) = connect_of(&io);
        assert_eq!(cmd.qid.get() as usize, i + 1);
        assert_eq!(cmd.kato.get(), 0);
        assert_eq!(data.cntlid.get(), cntlid, "I/O Connect carries the admin queue's CNTLID");
        assert_eq!(hostnqn(&data), hostnqn(&adata));
        assert_eq!(data.hostid, adata.hostid);
    }

    // The queue with the writes: an in-capsule 4 KiB write, and a 128 KiB write by R2T + H2CData.
    let io2 = connection(&format!("{prefix}-io2"));
    let mut r2ts = io2.c2h.iter().filter_map(|d| match d.pdu {
        Pdu::R2T(r) => Some(r),
        _ => None,
    });
    let r2t = r2ts.next().expect("an R2T");
    assert_eq!(r2t.r2to, 0);
    assert_eq!(r2t.r2tl, 128 * 1024, "nvmet asks for the whole 128 KiB at once (MAXH2CDATA is 4 MiB)");
    let h2c: Vec<_> = io2
        .h2c
        .iter()
        .filter_map(|d| match &d.pdu {
            Pdu::H2CData(h) => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(h2c.len(), 1, "Linux sends the 128 KiB in one H2CData PDU");
    assert_eq!((h2c[0].cccid, h2c[0].ttag, h2c[0].datao), (r2t.cccid, r2t.ttag, 0));
    assert_eq!(h2c[0].data.len(), 128 * 1024);
    assert!(h2c[0].last);
    let write = io2
        .h2c
        .iter()
        .find_map(|d| match &d.pdu {
            Pdu::CapsuleCmd(c) if c.sqe.cid() == r2t.cccid => Some(c),
            _ => None,
        })
        .expect("the command the R2T is for");
    assert_eq!(write.sqe.opcode, opcode::io::WRITE);
    assert!(write.data.is_empty(), "128 KiB is beyond in-capsule data: no ICD");
    assert!(
        io2.h2c
            .iter()
            .any(|d| matches!(&d.pdu, Pdu::CapsuleCmd(c) if c.sqe.opcode == opcode::io::WRITE && c.data.len() == 4096)),
        "the 4 KiB write goes in-capsule (nvmet IOCCSZ allows 8 KiB)"
    );

    // Reads come back as C2HData with LAST_PDU, without SUCCESS (nvmet 6.1 sends a CapsuleResp after them).
    let reads: Vec<_> = ["io1", "io2"]
        .iter()
        .flat_map(|q| connection(&format!("{prefix}-{q}")).c2h)
        .filter_map(|d| match d.pdu {
            Pdu::C2HData(c) => Some(c),
            _ => None,
        })
        .collect();
    assert!(!reads.is_empty());
    assert!(reads.iter().all(|c| c.last && !c.success && c.datao == 0));
}

#[test]
fn linux_host_linux_target_no_digests() {
    run_capture("plain", (false, false));
}

#[test]
fn linux_host_linux_target_digests_4k() {
    run_capture("dgst", (true, true));
}

/// The byte layouts of a few PDUs spelled out, so that a failure above can be read against them.
#[test]
fn golden_first_pdus() {
    let h2c = load("dgst-admin-h2c");
    let c2h = load("dgst-admin-c2h");
    // ICReq: type 0, HLEN 128, PLEN 128, PFV 0, HPDA 0, DGST 3 (both), MAXR2T 0.
    assert_eq!(&h2c[..16], &[0, 0, 128, 0, 128, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0]);
    // ICResp: type 1, CPDA 0, DGST 3, MAXH2CDATA 0x400000.
    assert_eq!(&c2h[..16], &[1, 0, 128, 0, 128, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0x40, 0]);
    assert!(h2c[16..128].iter().all(|&b| b == 0) && c2h[16..128].iter().all(|&b| b == 0));
    // Connect capsule with digests: FLAGS HDGSTF|DDGSTF, HLEN 72, PDO 76 (72 + 4-byte header digest),
    // PLEN 76 + 1024 + 4 = 0x450.
    assert_eq!(&h2c[128..136], &[4, 3, 72, 76, 0x50, 0x04, 0, 0]);
    // Its SQE: opcode 0x7F, PSDT 01b (flags 0x40), FCTYPE 1.
    assert_eq!((h2c[136], h2c[137], h2c[140]), (0x7F, 0x40, 0x01));
    let _ = ConnectData::read_from_bytes(&h2c[128 + 76..128 + 76 + 1024]).unwrap();
}
