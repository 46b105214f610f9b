//! `holdfast gen-dhchap-key`: a DH-HMAC-CHAP secret in the DHHC-1 representation (NVMe Base 2.0 §8.13.5.8), as
//! `nvme gen-dhchap-key` (nvme-cli 3: `nvme keys gen-kxchap-secret`) prints it, for a target's `[[host]]` table
//! and a host's `--dhchap-secret` / `--dhchap-ctrl-secret`: `DHHC-1:XX:<base64 of key || CRC-32>:`, the key
//! from the OS's random number generator (or given in hexadecimal), XX the hash both sides transform it with
//! before use (keyed with the owner's NQN, at use: the secret itself carries no NQN, as nvme-cli 3's).

use anyhow::bail;
use clap::Args as ClapArgs;
use holdfast_proto::auth::{DhchapSecret, HashId};
use std::process::ExitCode;

/// Options of `holdfast gen-dhchap-key`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Length of the key in bytes: 32, 48 or 64 (default: the hash's length, else 32).
    #[arg(long, short = 'l')]
    key_len: Option<usize>,
    /// Hash the key is transformed with before use: 0 none, 1 SHA-256, 2 SHA-384, 3 SHA-512 (nvme-cli's
    /// --hmac).
    #[arg(long, short = 'm', default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    hmac: u8,
    /// The key itself, in hexadecimal, instead of a random one (nvme-cli's --secret).
    #[arg(long, short = 's', value_name = "HEX")]
    secret: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let transform = HashId::from_id(a.hmac);
    let len = a.key_len.unwrap_or_else(|| transform.map_or(32, HashId::len));
    if !matches!(len, 32 | 48 | 64) {
        bail!("--key-len: {len} bytes; a DH-HMAC-CHAP key is 32, 48 or 64 bytes");
    }
    let key = match &a.secret {
        Some(hex) => {
            let hex = hex.trim();
            // The error names the length and the rule, never the digits (a secret).
            let key: Option<Vec<u8>> = (hex.len() % 2 == 0 && hex.is_ascii())
                .then(|| (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect())
                .flatten();
            match key {
                Some(k) if k.len() == len => zeroize::Zeroizing::new(k),
                Some(k) if a.key_len.is_some() => bail!("--secret: {} bytes, not the {len} of --key-len", k.len()),
                Some(k) => bail!(
                    "--secret: {} bytes, not the {len} of --hmac {} (its hash's length, the key's unless --key-len \
                     says otherwise)",
                    k.len(),
                    a.hmac
                ),
                None => bail!("--secret: not hexadecimal (two digits a byte)"),
            }
        }
        None => {
            use rand::RngCore;
            let mut k = zeroize::Zeroizing::new(vec![0u8; len]);
            rand::rngs::OsRng.fill_bytes(&mut k);
            k
        }
    };
    outln!("{}", DhchapSecret::new(&key, transform).encode());
    Ok(ExitCode::SUCCESS)
}
