#!/usr/bin/env bash
# quickstart.sh: build holdfast and serve a 256 MiB RAM namespace on 127.0.0.1:4420 until Ctrl-C.
#   LISTEN=ADDR:PORT NQN=... RAM_MIB=... override the defaults.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo >/dev/null || { echo "quickstart.sh: needs a Rust toolchain (https://rustup.rs)" >&2; exit 1; }
cargo build --release --quiet
exec "${CARGO_TARGET_DIR:-$root/target}/release/holdfast" target --listen "${LISTEN:-127.0.0.1:4420}" \
  --nqn "${NQN:-nqn.2026-01.io.holdfast:demo}" --ram-mib "${RAM_MIB:-256}"
