//! Fuzz the NBD bridge's server (`holdfast::nbd::server::serve`) with a hostile NBD client: the export is
//! namespace 1 (1 MiB, 512-byte blocks) of an in-process holdfast target, reached through the host library,
//! as `holdfast nbd` serves it; the client sends what the input says (client flags, options with any code
//! and data, lengths that lie, then requests of any type, flags, handle, offset and length, with or without
//! their payload, or raw bytes), then closes. The server must never panic (in any task), must end within 20 s
//! of the client closing, and must send no more than the greeting, a bounded answer per option and, per
//! request, a reply with at most the data it asked for (with raw bytes, or an option whose length lies, counted
//! as if every 16 bytes were an option and every 28 a read of the most a request may ask: a bound that only
//! a runaway server breaks).
//!
//! Input: byte 0: bit 0 the old EXPORT_NAME instead of GO, bit 1 no NBD_INFO_BLOCK_SIZE request in GO (the
//! client is then held to bytes, not blocks), bit 2 client flags from the input, bit 3 everything from the
//! input as raw bytes (no structure at all); then options and requests (see `Client::op`).
#![no_main]
use holdfast::nbd::server::{self, Export};
use holdfast::nbd::wire::{self, cmd, info, opt};
use holdfast_host::{ConnectOptions, Controller, Namespace};
use holdfast_target::Server;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NQN: &str = "nqn.2026-01.io.holdfast:fuzz-nbd";

struct World {
    rt: tokio::runtime::Runtime,
    export: Arc<Export>,
    _ctrl: Controller,
    _server: Server,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (_, srv) = target::start(&rt, NQN, "");
        let (ctrl, ns) = rt.block_on(async {
            let ctrl = Controller::connect(ConnectOptions::new(srv.bound[0].1.to_string(), NQN)).await.unwrap();
            let ns = Namespace::open(&ctrl, 1).await.unwrap();
            (ctrl, ns)
        });
        let export = Arc::new(Export {
            ns,
            name: "fuzz".into(),
            description: "fuzz".into(),
            read_only: false,
            // Small enough that large requests wait for one another, and no smaller than one request's cost
            // (as `holdfast nbd`'s INFLIGHT_BYTES is not): a request costing more would wait for ever.
            budget: Arc::new(tokio::sync::Semaphore::new(2 * server::MAX_REQUEST as usize)),
            stall_timeout: Duration::from_secs(2),
            partial_blocks: server::partial_block_locks(),
        });
        World { rt, export, _ctrl: ctrl, _server: srv }
    })
}

// (Its data-PDU helper, offset_and_length, is for the NVMe/TCP harnesses.)
#[allow(dead_code)]
#[path = "../common/input.rs"]
mod input;
#[path = "../common/target.rs"]
mod target;
use input::Input;

/// What the client sends, and the most the server may answer with.
#[derive(Default)]
struct Client {
    out: Vec<u8>,
    /// Options sent.
    options: usize,
    /// An option's length did not match its data: what follows may be read as other options or requests
    /// than were built, and the bound is counted as for raw bytes.
    lied: bool,
    /// Requests sent, and the data their replies may carry.
    requests: usize,
    read_bytes: u64,
}

impl Client {
    fn option(&mut self, code: u32, data: &[u8], claimed: Option<u32>) {
        self.out.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
        self.out.extend_from_slice(&code.to_be_bytes());
        self.out.extend_from_slice(&claimed.unwrap_or(data.len() as u32).to_be_bytes());
        self.out.extend_from_slice(data);
        self.options += 1;
    }

    /// One option (before the transmission phase); `None` at the input's end.
    fn op_option(&mut self, inp: &mut Input) -> Option<()> {
        let sel = inp.byte()?;
        let code = [opt::GO, opt::INFO, opt::LIST, opt::STRUCTURED_REPLY, opt::STARTTLS, opt::ABORT]
            .get(sel as usize % 8)
            .copied()
            .unwrap_or_else(|| sel as u32 >> 3);
        let mut data = Vec::new();
        if code == opt::GO || code == opt::INFO {
            let name: &[u8] = [&b"fuzz"[..], b"", b"nope"][inp.byte()? as usize % 3];
            data.extend_from_slice(&(name.len() as u32).to_be_bytes());
            data.extend_from_slice(name);
            let n = inp.byte()? % 4;
            data.extend_from_slice(&(n as u16).to_be_bytes());
            for _ in 0..n {
                let i = [info::EXPORT, info::NAME, info::DESCRIPTION, info::BLOCK_SIZE][inp.byte()? as usize % 4];
                data.extend_from_slice(&i.to_be_bytes());
            }
        } else {
            let n = (inp.byte()? % 32) as usize;
            data.extend_from_slice(inp.0.get(..n)?);
            inp.0 = &inp.0[n..];
        }
        // A length that lies (shorter or longer than the data), sometimes.
        let claimed = (sel & 0x80 != 0).then(|| inp.u32()).flatten();
        self.lied |= claimed.is_some_and(|c| c as usize != data.len());
        self.option(code, &data, claimed);
        Some(())
    }

    /// One request (in the transmission phase); `None` at the input's end.
    fn op_request(&mut self, inp: &mut Input) -> Option<()> {
        let sel = inp.byte()?;
        if sel % 16 == 15 {
            // Raw bytes.
            let n = (inp.byte()? % 40) as usize;
            self.out.extend_from_slice(inp.0.get(..n)?);
            inp.0 = &inp.0[n..];
            self.requests += 1;
            return Some(());
        }
        let ty =
            [cmd::READ, cmd::WRITE, cmd::FLUSH, cmd::TRIM, cmd::WRITE_ZEROES, cmd::DISC, cmd::READ, cmd::WRITE, 5, 7]
                .get(sel as usize % 16)
                .copied()
                .unwrap_or(sel as u16);
        let flags = inp.byte()? as u16 & 7;
        let m = inp.byte()?;
        let offset = match m & 3 {
            0 => (inp.byte()? as u64) * 4096 % (1 << 20),
            1 => inp.u16()? as u64 * 16,
            2 => inp.u32()? as u64,
            _ => (1 << 20) - 512,
        };
        let length = match (m >> 2) & 3 {
            0 => 512 * (1 + (inp.byte()? as u32 % 16)),
            1 => inp.u16()? as u32,
            2 => inp.u32()?,
            _ => 4096,
        };
        // The payload of a write: all of it, some of it, or none.
        let payload = if ty == cmd::WRITE {
            match (m >> 4) & 3 {
                0 | 1 => length.min(1 << 20) as usize,
                2 => (length as usize).min(inp.byte()? as usize * 16),
                _ => 0,
            }
        } else {
            0
        };
        let mut r =
            wire::Request { magic: wire::REQUEST_MAGIC, flags, ty, handle: self.requests as u64, offset, length }
                .encode();
        if m & 0x40 != 0 {
            r[0] ^= 0xFF; // a bad magic
        }
        self.out.extend_from_slice(&r);
        self.out.extend((0..payload).map(|i| (i as u8) ^ 0x3C));
        if ty == cmd::READ {
            self.read_bytes += length.min(server::MAX_REQUEST) as u64;
        }
        self.requests += 1;
        Some(())
    }
}

async fn case(input: &[u8]) {
    let w = world();
    let mut inp = Input(input);
    let Some(mode) = inp.byte() else { return };
    let mut c = Client::default();
    if mode & 8 != 0 {
        c.out.extend_from_slice(inp.0);
        c.options = inp.0.len() / 16 + 1;
        c.requests = inp.0.len() / wire::REQUEST_LEN + 1;
        c.read_bytes = server::MAX_REQUEST as u64 * c.requests as u64;
    } else {
        let flags =
            if mode & 4 != 0 { inp.u32().unwrap_or(0) } else { wire::client::FIXED_NEWSTYLE | wire::client::NO_ZEROES };
        c.out.extend_from_slice(&flags.to_be_bytes());
        // Options, then the one that chooses the export, then requests.
        let n = inp.byte().unwrap_or(0) % 4;
        for _ in 0..n {
            if c.op_option(&mut inp).is_none() {
                break;
            }
        }
        if mode & 1 != 0 {
            c.option(opt::EXPORT_NAME, b"fuzz", None);
        } else {
            let mut d = Vec::new();
            d.extend_from_slice(&4u32.to_be_bytes());
            d.extend_from_slice(b"fuzz");
            if mode & 2 == 0 {
                d.extend_from_slice(&1u16.to_be_bytes());
                d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
            } else {
                d.extend_from_slice(&0u16.to_be_bytes());
            }
            c.option(opt::GO, &d, None);
        }
        while c.op_request(&mut inp).is_some() {}
        if c.lied {
            c.options = c.out.len() / 16 + 1;
            c.requests = c.out.len() / wire::REQUEST_LEN + 1;
            c.read_bytes = server::MAX_REQUEST as u64 * c.requests as u64;
        }
    }

    let (client, srv) = tokio::io::duplex(256 * 1024);
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(server::serve(srv, w.export.clone(), stop.clone()));
    let (mut rd, mut wr) = tokio::io::split(client);
    let out = std::mem::take(&mut c.out);
    let send = async move {
        let _ = wr.write_all(&out).await;
        let _ = wr.shutdown().await;
        wr
    };
    let recv = async {
        let mut got = Vec::new();
        let _ = rd.read_to_end(&mut got).await;
        got
    };
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        let (wr, got) = tokio::join!(send, recv);
        (wr, got, serving.await)
    })
    .await;
    let Ok((_wr, got, served)) = r else { panic!("the NBD server did not end within 20 s of the client closing") };
    // An error is the server refusing the client (a protocol violation), which is fine.
    let served = served.expect("the connection's task panicked or was cancelled");
    if std::env::var_os("NBD_SERVER_DEBUG").is_some() {
        eprintln!("served: {served:?}; {} bytes back for {} options and {} requests", got.len(), c.options, c.requests);
        // Simple replies' (error, handle), where their magic is found.
        let magic = wire::SIMPLE_REPLY_MAGIC.to_be_bytes();
        for (i, _) in got.windows(16).enumerate().filter(|(_, w)| w[..4] == magic) {
            let e = u32::from_be_bytes(got[i + 4..i + 8].try_into().unwrap());
            eprintln!("reply at {i}: error {e}, handle {}", u64::from_be_bytes(got[i + 8..i + 16].try_into().unwrap()));
        }
    }
    // The greeting, each option's answer (its replies: an INFO/GO's few, a LIST's one name; the old
    // EXPORT_NAME's 134 bytes), and each request's 16-byte reply with at most the data it asked for.
    let bound = 18 + c.options * 512 + c.requests * wire::SIMPLE_REPLY_LEN + c.read_bytes as usize;
    assert!(got.len() <= bound, "the server sent {} bytes, more than {bound} for what was asked", got.len());
}

fuzz_target!(|input: &[u8]| {
    world().rt.block_on(case(input));
});
