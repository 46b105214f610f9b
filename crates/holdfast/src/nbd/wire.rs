//! NBD wire layouts and values, in one place: the fixed newstyle handshake, option requests and replies, the
//! transmission phase's request and simple reply (the NBD protocol, `doc/proto.md` of the reference
//! implementation, sections "Handshake", "Transmission" and "Values"). Every integer is big-endian.
//! Structured replies, metadata contexts and TLS are not offered, so their layouts are not here.

/// `NBDMAGIC`, the first 8 bytes a server sends (§ Newstyle negotiation).
pub const INIT_PASSWD: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the second 8 bytes the server sends, and the first 8 of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply (§ Fixed newstyle negotiation).
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request (§ Request message).
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply (§ Simple reply message).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (16 bits, sent by the server).
pub mod handshake {
    /// The server speaks fixed newstyle.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// The server can leave out the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (32 bits, the client's answer to the handshake flags). Any other bit, or one the server did
/// not offer, makes the server drop the connection.
pub mod client {
    /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    /// `NBD_FLAG_C_NO_ZEROES`.
    pub const NO_ZEROES: u32 = 1 << 1;
}

/// Transmission flags (16 bits, per export).
pub mod tflags {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// The export is read-only: writes, trims and write-zeroes fail with `EPERM`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_CMD_TRIM` is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// Flush and FUA take effect for every connection to the export: the server has no cache of its own,
    /// or one shared by all its connections.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// Option types (§ Option types).
pub mod opt {
    /// Choose an export and enter transmission (no error reply possible).
    pub const EXPORT_NAME: u32 = 1;
    /// End the negotiation.
    pub const ABORT: u32 = 2;
    /// List the exports.
    pub const LIST: u32 = 3;
    /// Upgrade to TLS.
    pub const STARTTLS: u32 = 5;
    /// Information about an export, staying in negotiation.
    pub const INFO: u32 = 6;
    /// Information about an export, then transmission.
    pub const GO: u32 = 7;
    /// Structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
}

/// Option reply types (§ Option reply types); errors have bit 31 set.
pub mod rep {
    /// Done (or: the option was accepted).
    pub const ACK: u32 = 1;
    /// One export, in answer to `NBD_OPT_LIST`.
    pub const SERVER: u32 = 2;
    /// One piece of information, in answer to `NBD_OPT_INFO`/`NBD_OPT_GO`.
    pub const INFO: u32 = 3;
    /// The option is not known to this server.
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    /// The option is malformed.
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = (1 << 31) + 7;
}

/// Information types in an `NBD_REP_INFO` reply (§ NBD_REP_INFO).
pub mod info {
    /// Size (u64) and transmission flags (u16); always sent before a successful INFO/GO.
    pub const EXPORT: u16 = 0;
    /// The export's canonical name.
    pub const NAME: u16 = 1;
    /// A description for people.
    pub const DESCRIPTION: u16 = 2;
    /// Minimum, preferred and maximum block size (u32 each).
    pub const BLOCK_SIZE: u16 = 3;
}

/// Request types (§ Request types).
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write (the payload follows the request).
    pub const WRITE: u16 = 1;
    /// Disconnect: no reply.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Trim (a hint).
    pub const TRIM: u16 = 4;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
}

/// Command flags (§ Command flags).
pub mod cflags {
    /// Force unit access: durable before the reply.
    pub const FUA: u16 = 1 << 0;
    /// Write zeroes only: the range must not become a hole.
    pub const NO_HOLE: u16 = 1 << 1;
}

/// Error values of the reply's error field (§ Error values).
pub mod errno {
    /// Operation not permitted (a write to a read-only export).
    pub const EPERM: u32 = 1;
    /// Input/output error.
    pub const EIO: u32 = 5;
    /// Invalid argument (unknown command or flag, misaligned or oversized request, a read beyond the end).
    pub const EINVAL: u32 = 22;
    /// No space left (a write beyond the end of the export).
    pub const ENOSPC: u32 = 28;
    /// The server is shutting down (requests that arrive after SIGINT/SIGTERM).
    pub const ESHUTDOWN: u32 = 108;
}

/// Size of an option request's header: IHAVEOPT (8), option (4), length (4).
pub const OPTION_HEADER: usize = 16;
/// Size of a transmission request: magic (4), flags (2), type (2), handle (8), offset (8), length (4).
pub const REQUEST_LEN: usize = 28;
/// Size of a simple reply: magic (4), error (4), handle (8).
pub const SIMPLE_REPLY_LEN: usize = 16;

/// The server's greeting: INIT_PASSWD, IHAVEOPT, handshake flags (18 bytes).
pub fn greeting(flags: u16) -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0..8].copy_from_slice(&INIT_PASSWD.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&flags.to_be_bytes());
    b
}

/// An option request's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// `IHAVEOPT` if well-formed.
    pub magic: u64,
    /// Option type.
    pub option: u32,
    /// Length of the data that follows.
    pub length: u32,
}

impl OptionHeader {
    /// Decode the 16 bytes of an option request's header.
    pub fn decode(b: &[u8; OPTION_HEADER]) -> OptionHeader {
        OptionHeader {
            magic: u64::from_be_bytes(b[0..8].try_into().unwrap_or_default()),
            option: u32::from_be_bytes(b[8..12].try_into().unwrap_or_default()),
            length: u32::from_be_bytes(b[12..16].try_into().unwrap_or_default()),
        }
    }
}

/// An option reply: REPLY_MAGIC (8), the option answered (4), reply type (4), length (4), then `data`.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// `NBD_REP_INFO` data of type `NBD_INFO_EXPORT`: type (2), size (8), transmission flags (2).
pub fn info_export(size: u64, flags: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..2].copy_from_slice(&info::EXPORT.to_be_bytes());
    b[2..10].copy_from_slice(&size.to_be_bytes());
    b[10..12].copy_from_slice(&flags.to_be_bytes());
    b
}

/// `NBD_REP_INFO` data of type `NBD_INFO_BLOCK_SIZE`: type (2), minimum (4), preferred (4), maximum (4).
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> [u8; 14] {
    let mut b = [0u8; 14];
    b[0..2].copy_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    b[2..6].copy_from_slice(&min.to_be_bytes());
    b[6..10].copy_from_slice(&preferred.to_be_bytes());
    b[10..14].copy_from_slice(&max.to_be_bytes());
    b
}

/// `NBD_REP_INFO` data carrying a string (`NBD_INFO_NAME`, `NBD_INFO_DESCRIPTION`): type (2), the string.
pub fn info_string(ty: u16, s: &str) -> Vec<u8> {
    let mut b = ty.to_be_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

/// `NBD_REP_SERVER` data: name length (4), name.
pub fn rep_server(name: &str) -> Vec<u8> {
    let mut b = (name.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(name.as_bytes());
    b
}

/// What `NBD_OPT_EXPORT_NAME` is answered with: size (8), transmission flags (2), and 124 zero bytes unless
/// the client set `NBD_FLAG_C_NO_ZEROES`.
pub fn export_name_reply(size: u64, flags: u16, zeroes: bool) -> Vec<u8> {
    let mut b = size.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    if zeroes {
        b.resize(b.len() + 124, 0);
    }
    b
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`: name length (4), name, number of requests (2), requests (2
/// each). None if the lengths do not add up to the option's length exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name ("" = the default export).
    pub name: Vec<u8>,
    /// Information types asked for.
    pub requests: Vec<u16>,
}

impl InfoRequest {
    /// Decode; None if malformed.
    pub fn decode(d: &[u8]) -> Option<InfoRequest> {
        let n = u32::from_be_bytes(d.get(0..4)?.try_into().ok()?) as usize;
        let name = d.get(4..4usize.checked_add(n)?)?.to_vec();
        let at = 4 + n;
        let k = u16::from_be_bytes(d.get(at..at + 2)?.try_into().ok()?) as usize;
        let list = d.get(at + 2..)?;
        if list.len() != 2 * k {
            return None;
        }
        let requests = list.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
        Some(InfoRequest { name, requests })
    }
}

/// A transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `REQUEST_MAGIC` if well-formed.
    pub magic: u32,
    /// Command flags.
    pub flags: u16,
    /// Request type.
    pub ty: u16,
    /// Opaque handle, echoed in the reply.
    pub handle: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length (of the payload too, for a write).
    pub length: u32,
}

impl Request {
    /// Decode the 28 bytes of a request.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Request {
        let u16at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let u32at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u64at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or_default());
        Request {
            magic: u32at(0),
            flags: u16at(4),
            ty: u16at(6),
            handle: u64at(8),
            offset: u64at(16),
            length: u32at(24),
        }
    }

    /// Encode, as a client does (the tests and the fuzz harness).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&self.magic.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.ty.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A simple reply's header: magic (4), error (4), handle (8); a successful read's data follows it.
pub fn simple_reply(error: u32, handle: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_is_the_spec_bytes() {
        assert_eq!(&greeting(3), b"NBDMAGICIHAVEOPT\x00\x03");
    }

    #[test]
    fn request_layout() {
        let raw: [u8; 28] = [
            0x25, 0x60, 0x95, 0x13, // magic
            0x00, 0x01, // flags: FUA
            0x00, 0x01, // type: write
            1, 2, 3, 4, 5, 6, 7, 8, // handle
            0, 0, 0, 0, 0, 0, 0x10, 0, // offset 4096
            0, 0, 0x02, 0, // length 512
        ];
        let r = Request::decode(&raw);
        assert_eq!(
            r,
            Request {
                magic: REQUEST_MAGIC,
                flags: cflags::FUA,
                ty: cmd::WRITE,
                handle: 0x0102_0304_0506_0708,
                offset: 4096,
                length: 512
            }
        );
        assert_eq!(r.encode(), raw);
    }

    #[test]
    fn replies_layout() {
        assert_eq!(simple_reply(22, 7), [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 7]);
        let r = option_reply(opt::GO, rep::ACK, &[]);
        assert_eq!(r, [0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(info_export(1 << 20, 0x0105), [0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0x01, 0x05]);
        assert_eq!(info_block_size(512, 4096, 1 << 25), [0, 3, 0, 0, 2, 0, 0, 0, 0x10, 0, 2, 0, 0, 0]);
        assert_eq!(export_name_reply(512, 1, true).len(), 134);
        assert_eq!(export_name_reply(512, 1, false), [0, 0, 0, 0, 0, 0, 2, 0, 0, 1]);
        assert_eq!(rep_server("ab"), [0, 0, 0, 2, b'a', b'b']);
    }

    #[test]
    fn info_request_must_add_up() {
        let ok = [0, 0, 0, 2, b'n', b's', 0, 2, 0, 3, 0, 1];
        assert_eq!(InfoRequest::decode(&ok), Some(InfoRequest { name: b"ns".to_vec(), requests: vec![3, 1] }));
        assert_eq!(InfoRequest::decode(&[0, 0, 0, 0, 0, 0]), Some(InfoRequest { name: vec![], requests: vec![] }));
        assert_eq!(InfoRequest::decode(&ok[..11]), None, "a request cut short");
        assert_eq!(InfoRequest::decode(&[0, 0, 0, 0, 0, 0, 9]), None, "a byte too many");
        assert_eq!(InfoRequest::decode(&[0xff, 0xff, 0xff, 0xff, 0, 0]), None, "a name longer than the data");
        assert_eq!(InfoRequest::decode(&[0, 0]), None);
    }
}
