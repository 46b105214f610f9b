//! Reading what a peer has sent so far, without waiting: shared by the harnesses that play one end of an
//! NVMe/TCP connection.

/// What a read of the bytes a peer has sent so far found ([`read_ready`]).
pub enum Ready {
    /// Bytes were appended to the buffer.
    Bytes,
    /// Nothing is waiting now.
    Nothing,
    /// The peer closed (or reset) the connection.
    Closed,
}

/// Append what `s` has received to `buf`, without waiting.
pub fn read_ready(s: &tokio::net::TcpStream, buf: &mut bytes::BytesMut) -> Ready {
    buf.reserve(64 * 1024);
    match s.try_read_buf(buf) {
        Ok(0) => Ready::Closed,
        Ok(_) => Ready::Bytes,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ready::Nothing,
        // A reset: the peer closed with our bytes unread.
        Err(_) => Ready::Closed,
    }
}
