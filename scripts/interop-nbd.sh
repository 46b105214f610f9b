#!/usr/bin/env bash
# interop-nbd.sh: `holdfast nbd` (the NBD bridge) against NBD clients nobody here wrote, Debian's qemu-utils
# and libnbd-bin, with holdfast's target (file namespace, 4 KiB blocks) behind it:
#   1. nbdinfo shows the negotiated export: size, block sizes (4096 minimum), flush/FUA/trim/zero/multi-conn;
#   2. qemu-io writes patterns (plain, FUA, zeroes), discards, flushes and reads them back checked;
#   3. nbdsh (libnbd's Python shell) as a client that asks for no block sizes writes, zeroes and reads bytes at
#      offsets and lengths that are not multiples of the 4096-byte blocks;
#   4. qemu-img converts 32 MiB of random data into the export and compares; nbdcopy (several connections,
#      as the export allows) copies it back out, compared with cmp;
#   5. ride-through: the target is SIGKILLed and restarted on the same port and file while one qemu-io holds
#      its connection (acknowledged data before, a write after) and another's write is issued while the
#      target is down: both exit 0, every pattern reads back, so does what qemu-img wrote before, and the
#      bridge logged the restored connection.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${HOLDFAST_BIN:-$root/target/release/holdfast}
if ! command -v qemu-io >/dev/null || ! command -v nbdinfo >/dev/null || [[ ! -x /usr/bin/nbdsh ]]; then
  echo "interop-nbd: installing qemu-utils libnbd-bin python3-libnbd"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends qemu-utils libnbd-bin python3-libnbd >/dev/null
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/holdfast-nbd.XXXXXX")
nqn=nqn.2026-01.io.holdfast:nbd
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
tport=$(free_port)
targs=(target --listen "127.0.0.1:$tport" --nqn "$nqn" --file "$work/ns.img" --size-mib 64 --block-size 4096)
tpid="" bpid="" ok=0
cleanup() {
  for p in $bpid $tpid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if ((ok)); then rm -rf "$work"; else echo "interop-nbd: logs kept in $work"; fi
}
trap cleanup EXIT
start_target() { "$bin" "${targs[@]}" >>"$work/target.log" 2>&1 & tpid=$!; sleep 0.5; kill -0 "$tpid"; }
fail() { echo "interop-nbd: FAIL: $*"; tail -n 30 "$work/bridge.log"; exit 1; }

start_target
"$bin" nbd --addr "127.0.0.1:$tport" --nqn "$nqn" --listen 127.0.0.1:0 --reconnect-delay-ms 200 \
  >"$work/bridge.out" 2>"$work/bridge.log" &
bpid=$!
for _ in $(seq 100); do grep -q '^listening: ' "$work/bridge.out" 2>/dev/null && break; sleep 0.1; done
bport=$(sed -n 's/^listening: 127.0.0.1:\([0-9]*\)$/\1/p' "$work/bridge.out")
[[ -n $bport ]] || fail "the bridge did not start"
uri="nbd://127.0.0.1:$bport/holdfast"
echo "interop-nbd: target 127.0.0.1:$tport, bridge $uri"

echo "== nbdinfo"
nbdinfo "$uri" >"$work/nbdinfo.txt"
sed 's/^/    /' "$work/nbdinfo.txt" | grep -E "size|block_size|can_(flush|fua|trim|zero|multi_conn)|read_only"
for want in "export-size: 67108864" "block_size_minimum: 4096" "can_flush: true" "can_fua: true" \
  "can_trim: true" "can_zero: true" "can_multi_conn: true" "is_read_only: false"; do
  grep -q "$want" "$work/nbdinfo.txt" || fail "nbdinfo does not show '$want'"
done

qio() {  # qio LOG COMMANDS...: qemu-io on the export; fails on a failed command or a pattern mismatch
  local log=$1; shift
  local args=() c
  for c in "$@"; do args+=(-c "$c"); done
  qemu-io -f raw "$uri" "${args[@]}" >"$log" 2>&1 || { cat "$log"; return 1; }
  if grep -qiE "fail|error|mismatch" "$log"; then cat "$log"; return 1; fi
}

echo "== qemu-io: patterns, FUA, zeroes, discard, flush"
qio "$work/qio1.log" 'write -P 0xa1 0 1M' 'write -P 0xb2 -f 1M 256k' 'write -z 2M 512k' 'write -P 0xc3 3M 4k' \
  'discard 4M 1M' 'flush' 'read -P 0xa1 0 1M' 'read -P 0xb2 1M 256k' 'read -P 0 2M 512k' 'read -P 0xc3 3M 4k' ||
  fail "qemu-io"
grep -c "^read " "$work/qio1.log" | grep -qx 4 || fail "qemu-io did not do its four reads"
echo "    4 writes, discard, flush, 4 checked reads"

echo "== libnbd as a client that does not ask for block sizes: bytes at any offset"
# nbdsh (Debian's python3-libnbd) without NBD_INFO_BLOCK_SIZE in its GO: NBD's default minimum block size of
# one byte applies, the bridge says so (libnbd's own checks then let these through) and must take them.
# Debian's own python3 (the module is installed for it), whatever python3 comes first in PATH.
PATH=/usr/bin:$PATH /usr/bin/nbdsh -c 'h.set_request_block_size(False)' -c "h.connect_uri('$uri')" -c '
import os
data = os.urandom(10000)
assert h.get_block_size(nbd.SIZE_MINIMUM) == 1, "minimum block size %d" % h.get_block_size(nbd.SIZE_MINIMUM)
h.pwrite(data, 5 * 1024 * 1024 + 7)
assert h.pread(10000, 5 * 1024 * 1024 + 7) == data, "unaligned read-back"
h.zero(100, 5 * 1024 * 1024 + 4000)
back = h.pread(10007, 5 * 1024 * 1024)
assert back == bytes(7) + data[:3993] + bytes(100) + data[4093:], "bytes around the zeroed ones"
h.pwrite(b"x", 6 * 1024 * 1024 + 4095)
assert h.pread(2, 6 * 1024 * 1024 + 4095) == b"x" + bytes(1), "one byte"
print("    10000 bytes at offset 5 MiB + 7, 100 zeroed across a block boundary, one byte: read back")
' 2>&1 | tee "$work/nbdsh.log"
grep -q "read back" "$work/nbdsh.log" || fail "libnbd without block sizes"

echo "== qemu-img convert + compare, nbdcopy back"
head -c 33554432 /dev/urandom >"$work/src.img"
qemu-img convert -n -f raw -O raw "$work/src.img" "$uri" || fail "qemu-img convert"
qemu-img compare -f raw -F raw "$work/src.img" "$uri" >"$work/compare.txt" 2>&1 || true
grep -q "Images are identical" "$work/compare.txt" || { cat "$work/compare.txt"; fail "qemu-img compare"; }
nbdcopy "$uri" "$work/back.img" || fail "nbdcopy"
cmp -n 33554432 "$work/src.img" "$work/back.img" || fail "nbdcopy read back other data"
echo "    32 MiB in with qemu-img and back with nbdcopy: identical"

echo "== ride-through: target killed and restarted under two qemu-io clients"
# A holds its connection: acknowledged data before the kill, a write and the checks after the restart.
qio "$work/qioA.log" 'write -P 0x5a 8M 4M' 'sleep 4000' 'write -P 0x6b 12M 4M' 'read -P 0x5a 8M 4M' \
  'read -P 0x6b 12M 4M' &
qa=$!
sleep 1.5
kill -9 "$tpid"; wait "$tpid" 2>/dev/null || true
# B's write is issued while the target is down: it waits in the bridge for the reconnect.
qio "$work/qioB.log" 'write -P 0x7c 16M 4M' 'read -P 0x7c 16M 4M' &
qb=$!
sleep 2
start_target
wait "$qa" || fail "qemu-io A across the outage: $(cat "$work/qioA.log")"
wait "$qb" || fail "qemu-io B across the outage: $(cat "$work/qioB.log")"
grep -q "connection restored" "$work/bridge.log" || fail "the bridge never lost or restored its connection"
qio "$work/qioC.log" 'read -P 0x5a 8M 4M' 'read -P 0x6b 12M 4M' 'read -P 0x7c 16M 4M' || fail "data after the outage"
# What qemu-img wrote before the outage, beyond what A and B wrote since, is intact too.
nbdcopy "$uri" "$work/back2.img" || fail "nbdcopy after the outage"
cmp -i 20971520 -n 12582912 "$work/src.img" "$work/back2.img" || fail "data written before the outage changed"
grep "connection restored" "$work/bridge.log" | sed 's/^/    /' | tail -n 1
echo "    A: write, outage, write, reads checked; B: write issued during the outage; all data read back"

echo "== a second bridge on a Unix socket, read-only"
"$bin" nbd --addr "127.0.0.1:$tport" --nqn "$nqn" --socket "$work/nbd.sock" --read-only \
  >"$work/bridge2.out" 2>"$work/bridge2.log" &
bpid="$bpid $!"
for _ in $(seq 100); do grep -q '^listening: ' "$work/bridge2.out" 2>/dev/null && break; sleep 0.1; done
uri="nbd+unix:///holdfast?socket=$work/nbd.sock"
qemu-io -r -f raw "$uri" -c 'read -P 0x7c 16M 4M' >"$work/qioD.log" 2>&1 || { cat "$work/qioD.log"; fail "read through the Unix socket"; }
grep -qiE "fail|error" "$work/qioD.log" && { cat "$work/qioD.log"; fail "read through the Unix socket"; }
# qemu sees the export's READ_ONLY flag and will not open it for writing (the bridge's EPERM for writes that
# come anyway is in crates/holdfast/tests/nbd.rs).
qemu-io -f raw "$uri" -c 'write -P 1 0 4k' >"$work/qioE.log" 2>&1 && fail "qemu-io opened the read-only export for writing"
grep -q "Permission denied" "$work/qioE.log" || { cat "$work/qioE.log"; fail "qemu-io on the read-only export"; }
echo "    read checked; qemu will not open the export read-write (READ_ONLY flag)"
ok=1
echo "interop-nbd: passed"
