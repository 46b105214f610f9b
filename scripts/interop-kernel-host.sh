#!/usr/bin/env bash
# interop-kernel-host.sh: the Linux kernel NVMe/TCP host (in a VM) against holdfast's target.
#   1. RAM namespace, 512-byte blocks, header + data digests, SQ flow control disabled (nvme-cli
#      --disable-sqflow); traffic captured and checked by Wireshark, which must see reads completed by their
#      C2HData alone (SUCCESS flag)
#   2. RAM namespace, 4096-byte blocks, no digests
#   3. file namespace
#   4. nvme-cli: every Identify, log page and feature the target claims; two controller resets
# Each run starts its own target on a free 127.0.0.1 port and kills it by PID afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
interop=${INTEROP_DIR:-$root/../shared/interop}
export NVME_TCP_CHECK=${NVME_TCP_CHECK:-$root/../shared/captures/nvme-tcp-check.sh}
bin=${HOLDFAST_BIN:-$root/target/release/holdfast}
logs=${INTEROP_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/holdfast-interop.XXXXXX")}
nqn=nqn.2026-01.io.holdfast:interop
pass=0 fail=0 tpid="" dpid=""
cleanup() { [[ -n $tpid ]] && kill "$tpid" 2>/dev/null; [[ -n $dpid ]] && kill "$dpid" 2>/dev/null; true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_target() {  # start_target ARGS...: our target on a fresh port; sets port, tpid
  port=$(free_port)
  "$bin" target --listen "127.0.0.1:$port" --nqn "$nqn" "$@" >"$logs/target-$port.log" 2>&1 &
  tpid=$!
  for _ in $(seq 100); do grep -q '^connect:' "$logs/target-$port.log" 2>/dev/null && return 0; sleep 0.05; done
  echo "target did not start:"; cat "$logs/target-$port.log"; return 1
}
stop_target() { kill "$tpid" 2>/dev/null; wait "$tpid" 2>/dev/null || true; tpid=""; }

run() {  # run NAME PATTERN COMMAND...
  local name=$1 pattern=$2; shift 2
  local t0=$EPOCHREALTIME rc=0
  echo "=== $name"
  "$@" >"$logs/$name.log" 2>&1 || rc=$?
  local dt; dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  if ((rc == 0)) && grep -q "$pattern" "$logs/$name.log"; then
    pass=$((pass + 1)); echo "    pass ($dt s)"; grep -E "rw_check|ext4:|HOST-ROLE|NVME-CLI|nvme-tcp-check" "$logs/$name.log" | sed 's/^/    /' || true
  else
    fail=$((fail + 1)); echo "    FAIL ($dt s, exit $rc): last lines of $logs/$name.log"; tail -n 60 "$logs/$name.log" | sed 's/^/    /'
    [[ -n ${port:-} && -f $logs/target-$port.log ]] && { echo "    target log:"; tail -n 30 "$logs/target-$port.log" | sed 's/^/    /'; }
  fi
}

digests_512() {
  start_target --ram-mib 64 --block-size 512
  tcpdump -i lo -s 0 -U -w "$logs/digests.pcap" "tcp port $port" >"$logs/tcpdump.log" 2>&1 & dpid=$!
  sleep 0.5
  local rc=0
  # With SQ flow control disabled, as nvme-cli connects after a discovery log entry that allows it: our target
  # answers the Connect with SQHD FFFFh and completes reads with their C2HData alone (SUCCESS flag).
  "$interop/kernel-host.sh" --port "$port" --nqn "$nqn" --digests --mib 16 -- -q \
    -e "CONNECT_OPTS=-g -G --disable-sqflow" || rc=$?
  sleep 0.3; kill "$dpid" 2>/dev/null; wait "$dpid" 2>/dev/null || true; dpid=""
  stop_target
  ((rc == 0)) || return $rc
  echo "HOST-ROLE-PASSED (digests, SQ flow control disabled)"
  # nvme-tcp-check.sh, plus the one TCP-level exception loopback to a VM needs (see that script's header)
  "$root/scripts/nvme-tcp-check-loopback.sh" "$logs/digests.pcap" "$port" --expect-c2h-success
}
nodigest_4k() { start_target --ram-mib 64 --block-size 4096; local rc=0
  "$interop/kernel-host.sh" --port "$port" --nqn "$nqn" --mib 16 -- -q || rc=$?; stop_target; ((rc == 0)) && echo HOST-ROLE-PASSED; return $rc; }
file_ns() { start_target --file "$logs/ns.img" --size-mib 64 --block-size 512; local rc=0
  "$interop/kernel-host.sh" --port "$port" --nqn "$nqn" --mib 16 -- -q || rc=$?; stop_target; ((rc == 0)) && echo HOST-ROLE-PASSED; return $rc; }
nvme_cli() { start_target --ram-mib 64 --block-size 4096; local rc=0
  "$interop/kernel-host.sh" --port "$port" --nqn "$nqn" --guest-script "$root/tests/interop/guest-nvme-cli.sh" || rc=$?; stop_target; return $rc; }

"$interop/setup.sh" >/dev/null
command -v tcpdump >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tcpdump >/dev/null; }
run kernel-host-digests-512 "nvme-tcp-check: .* none malformed" digests_512
run kernel-host-4k "HOST-ROLE-PASSED" nodigest_4k
run kernel-host-file "HOST-ROLE-PASSED" file_ns
run kernel-host-nvme-cli "NVME-CLI-PASSED" nvme_cli
echo "interop (kernel host -> holdfast target): $pass passed, $fail failed (logs in $logs)"
# The data files (images, what was written and read back) go either way; the logs stay only for a failure.
find "$logs" -name '*.img' -o -name '*.bin' | xargs -r rm -f
((fail == 0)) || exit 1
[[ -n ${INTEROP_LOGS:-} ]] || rm -rf "$logs"
