//! Opening one queue's TCP connection and the ICReq/ICResp exchange (NVMe/TCP 1.0 §3.3.1, §3.6.2.2–3).

use crate::error::{Error, Result};
use bytes::BytesMut;
use holdfast_proto::decoder::{Limits, PduDecoder, Role};
use holdfast_proto::pdu::{offset, Fes, Framing, IcReq, Pdu, TermReq};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The least MAXH2CDATA a controller may offer (NVMe/TCP 1.0 §3.6.2.3; Linux enforces 4096).
pub const MIN_MAXH2CDATA: u32 = 4096;

/// An initialized connection, ready to carry a queue.
pub struct Connection {
    /// The socket.
    pub stream: TcpStream,
    /// The decoder, past the IC exchange.
    pub decoder: PduDecoder,
    /// Bytes received after the ICResp.
    pub inbuf: BytesMut,
    /// How we frame what we send.
    pub framing: Framing,
    /// The controller's MAXH2CDATA.
    pub maxh2cdata: usize,
}

/// A connect error for an address that is not HOST:PORT (the error names the address) says what is expected
/// (the resolver's own words are "invalid socket address").
fn address_hint(e: std::io::Error) -> std::io::Error {
    if e.kind() != std::io::ErrorKind::InvalidInput {
        return e;
    }
    std::io::Error::new(e.kind(), format!("{e}: expected HOST:PORT (e.g. 127.0.0.1:4420, [::1]:4420)"))
}

/// Connect to `addr` and exchange ICReq/ICResp, within `timeout`. The controller must grant exactly the
/// digests asked for.
pub async fn connect(addr: &str, hdgst: bool, ddgst: bool, max_c2h: usize, timeout: Duration) -> Result<Connection> {
    let fut = async {
        let stream =
            TcpStream::connect(addr).await.map_err(|e| Error::Connect { addr: addr.into(), io: address_hint(e) })?;
        let _ = stream.set_nodelay(true);
        let mut stream = stream;
        let ic = Pdu::IcReq(IcReq { pfv: 0, hpda: 0, hdgst, ddgst, maxr2t: 0 });
        stream.write_all(&ic.to_bytes(&Framing::default())).await.map_err(|e| Error::Transport {
            addr: addr.into(),
            qid: 0,
            io: e,
        })?;
        let limits = Limits { max_incapsule: 0, max_h2c_data: 0, max_c2h_data: max_c2h as u32 };
        let mut decoder = PduDecoder::new(Role::Host, limits);
        let mut inbuf = BytesMut::with_capacity(64 * 1024);
        let resp = loop {
            match decoder.decode(&mut inbuf) {
                Ok(Some(Pdu::IcResp(r))) => break r,
                Ok(Some(Pdu::C2HTermReq(t))) => {
                    return Err(Error::Protocol {
                        qid: 0,
                        what: format!("{addr} refused the ICReq (FES {:#x}, FEI {:#x})", t.fes, t.fei),
                    })
                }
                Ok(Some(p)) => {
                    let what = format!("{addr} answered the ICReq with {:?}, not an ICResp", p.pdu_type());
                    return Err(Error::Protocol { qid: 0, what });
                }
                Ok(None) => {}
                Err(e) => {
                    // (A malformed C2HTermReq is answered by closing alone.)
                    if let holdfast_proto::decoder::DecodeError::Fatal(f) = &e {
                        if !f.close_silently {
                            refuse(&mut stream, f.fes, f.fei, f.header.clone()).await;
                        }
                    }
                    // What answered is most likely not an NVMe/TCP target at all (a web server, SSH): say where.
                    let what = format!("{addr} answered the ICReq with something that is not NVMe/TCP ({e})");
                    return Err(Error::Protocol { qid: 0, what });
                }
            }
            let n =
                stream.read_buf(&mut inbuf).await.map_err(|e| Error::Transport { addr: addr.into(), qid: 0, io: e })?;
            if n == 0 {
                return Err(Error::Transport {
                    addr: addr.into(),
                    qid: 0,
                    io: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed during ICReq"),
                });
            }
        };
        // An ICResp we cannot take ends the connection with an H2CTermReq naming the field, the ICResp as its
        // data (NVMe/TCP 1.0 §3.6.2.2).
        let refusal = if resp.pfv != 0 {
            Some((Fes::UnsupportedParameter, offset::IC_PFV, format!("unsupported PDU format version {}", resp.pfv)))
        } else if resp.hdgst != hdgst || resp.ddgst != ddgst {
            let what = format!(
                "digests not granted as asked (asked header {hdgst} data {ddgst}, got header {} data {})",
                resp.hdgst, resp.ddgst
            );
            Some((Fes::InvalidHeaderField, offset::IC_DGST, what))
        } else if resp.maxh2cdata < MIN_MAXH2CDATA || !resp.maxh2cdata.is_multiple_of(4) {
            Some((Fes::InvalidHeaderField, offset::IC_MAX, format!("invalid MAXH2CDATA {}", resp.maxh2cdata)))
        } else if resp.cpda > 31 {
            Some((Fes::InvalidHeaderField, offset::IC_PDA, format!("invalid CPDA {}", resp.cpda)))
        } else {
            None
        };
        if let Some((fes, fei, what)) = refusal {
            refuse(&mut stream, fes, fei, bytes::Bytes::copy_from_slice(decoder.last_header())).await;
            return Err(Error::Protocol { qid: 0, what });
        }
        decoder.set_negotiated(hdgst, ddgst, 0);
        let framing = Framing { hdgst, ddgst, pda: resp.cpda };
        Ok(Connection { stream, decoder, inbuf, framing, maxh2cdata: resp.maxh2cdata as usize })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout { what: format!("connecting to {addr} (TCP + ICReq)"), after: timeout }),
    }
}

/// How long a refused ICResp's H2CTermReq may take to go out.
const REFUSE_FLUSH: Duration = Duration::from_millis(200);

/// Send an H2CTermReq (best effort, briefly) and close our side.
async fn refuse(stream: &mut TcpStream, fes: Fes, fei: u32, header: bytes::Bytes) {
    tracing::debug!("refusing the ICResp: sending H2CTermReq (FES {:#x}, FEI {fei:#x})", fes as u16);
    let t = Pdu::H2CTermReq(TermReq { fes: fes as u16, fei, data: header }).to_bytes(&Framing::default());
    let _ = tokio::time::timeout(REFUSE_FLUSH, async {
        let _ = stream.write_all(&t).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
