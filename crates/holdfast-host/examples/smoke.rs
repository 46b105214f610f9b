//! A smoke test of the whole namespace API against any NVMe/TCP target:
//! `cargo run -p holdfast-host --example smoke -- 127.0.0.1:4420 NQN [NSID] [--digests]`.
//! Connects with two I/O queues, then write (plain and FUA), read, read_into, flush, write zeroes,
//! deallocate and a transfer larger than MDTS, each checked; prints one line per step.

use bytes::Bytes;
use holdfast_host::{ConnectOptions, Controller, Namespace};
use std::time::Instant;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(addr), Some(nqn)) = (args.first(), args.get(1)) else {
        eprintln!("usage: smoke ADDR NQN [NSID] [--digests]");
        std::process::exit(2);
    };
    let nsid = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let digests = args.iter().any(|a| a == "--digests");
    let mut o = ConnectOptions::new(addr.clone(), nqn.clone());
    o.nr_io_queues = 2;
    o.hdgst = digests;
    o.ddgst = digests;
    let t0 = Instant::now();
    let c = Controller::connect(o).await?;
    let ns = Namespace::open(&c, nsid).await?;
    println!(
        "connected in {:?}: cntlid {}, {} I/O queues, max transfer {} bytes; ns {nsid}: {} blocks of {}",
        t0.elapsed(),
        c.cntlid(),
        c.io_queues(),
        c.max_transfer(),
        ns.nblocks(),
        ns.block_size()
    );
    let bs = ns.block_size() as usize;
    let pattern = |n: usize, seed: u32| -> Bytes {
        (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed).to_le_bytes()[2]).collect()
    };
    let d = pattern(8 * bs, 1);
    ns.write(16, d.clone(), false).await?;
    assert!(ns.read(16, 8).await? == d, "read-back differs");
    println!("write + read 8 blocks: ok");
    let f = pattern(bs, 2);
    ns.write(40, f.clone(), true).await?;
    let mut buf = vec![0u8; bs];
    ns.read_into(40, &mut buf).await?;
    assert!(buf == f[..], "FUA read-back differs");
    println!("write FUA + read_into: ok");
    ns.flush().await?;
    println!("flush: ok");
    ns.write_zeroes(16, 4).await?;
    let z = ns.read(16, 8).await?;
    assert!(z[..4 * bs].iter().all(|&b| b == 0) && z[4 * bs..] == d[4 * bs..], "write zeroes");
    println!("write zeroes: ok");
    match ns.deallocate(16, 8).await {
        Ok(()) => println!("deallocate: ok"),
        Err(e) => println!("deallocate: {e}"),
    }
    let big = pattern(c.max_transfer() * 2 + bs, 3);
    let blocks = (big.len() / bs) as u64;
    if blocks + 1024 <= ns.nblocks() {
        ns.write(1024, big.clone(), false).await?;
        assert!(ns.read(1024, blocks).await? == big, "large read-back differs");
        println!("write + read {} bytes (split by MDTS): ok", big.len());
    }
    c.shutdown().await?;
    println!("shutdown: ok ({:?} in all)", t0.elapsed());
    Ok(())
}
