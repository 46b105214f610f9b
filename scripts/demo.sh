#!/usr/bin/env bash
# demo.sh: ride-through, shown. A target serves a file namespace; holdfast's host runs a verifying randrw
# workload; the target is killed (SIGKILL) and restarted 3 s later; the host reconnects, re-issues what was
# in flight, and the workload ends with 0 errors. Prints the timeline.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo >/dev/null || { echo "demo.sh: needs a Rust toolchain (https://rustup.rs)" >&2; exit 1; }
cargo build --release --quiet   # at once when the binary is current; never a stale one after a pull
bin=${CARGO_TARGET_DIR:-$root/target}/release/holdfast
work=$(mktemp -d "${TMPDIR:-/tmp}/holdfast-demo.XXXXXX")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nqn=nqn.2026-01.io.holdfast:demo
args=(target --listen "127.0.0.1:$port" --nqn "$nqn" --file "$work/ns.img" --size-mib 128 --block-size 4096 --reconnect-delay-ms 500)
tpid=""; bpid=""
trap '[[ -n $tpid ]] && kill $tpid 2>/dev/null; [[ -n $bpid ]] && kill $bpid 2>/dev/null; true' EXIT
t0=$EPOCHREALTIME
at() { awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%6.2f s", b - a }'; }
"$bin" "${args[@]}" >"$work/target.log" 2>&1 & tpid=$!
sleep 0.5
echo "[$(at)] target up: file namespace $work/ns.img on 127.0.0.1:$port (policy: reconnect delay 500 ms)"
HOLDFAST_LOG=info "$bin" bench --addr "127.0.0.1:$port" --nqn "$nqn" --workload randrw --bs 4096 --qd 16 --queues 2 \
  --time 12 --verify >"$work/bench.out" 2>"$work/bench.log" & bpid=$!
echo "[$(at)] host: bench randrw 4 KiB, qd 16 x 2 queues, every read verified"
sleep 4
kill -9 "$tpid"; wait "$tpid" 2>/dev/null || true; echo "[$(at)] target KILLED (SIGKILL)"
sleep 3
"$bin" "${args[@]}" >>"$work/target.log" 2>&1 & tpid=$!
echo "[$(at)] target restarted (same NQN, serial and namespace IDs; new instance)"
wait "$bpid" && rc=0 || rc=$?; bpid=""
echo "--- what the host saw:"
grep -E "connection lost|reconnect attempt|restarted|restored" "$work/bench.log" | sed -E 's/\x1b\[[0-9;]*m//g; s/^[0-9T:.-]+Z +//' | sed 's/^/    /'
echo "--- result:"
sed 's/^/    /' "$work/bench.out"
exit $rc
