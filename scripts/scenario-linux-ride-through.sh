#!/usr/bin/env bash
# scenario-linux-ride-through.sh (S7): the Linux kernel host (VM, --reconnect-delay 1) with ext4 mounted on
# holdfast's target (file namespace) rides through a SIGKILL of the target and a restart 3 s later; every file
# verifies afterwards and the kernel logs no I/O error.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
interop=${INTEROP_DIR:-$root/../shared/interop}
bin=${HOLDFAST_BIN:-$root/target/release/holdfast}
work=$(mktemp -d "${TMPDIR:-/tmp}/holdfast-s7.XXXXXX")
nqn=nqn.2026-01.io.holdfast:s7
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
args=(target --listen "127.0.0.1:$port" --nqn "$nqn" --file "$work/ns.img" --size-mib 128 --block-size 4096)
"$bin" "${args[@]}" >"$work/target1.log" 2>&1 &
echo $! >"$work/pid"
# The target running at exit (the first, or the restarted one) is killed by PID; the work directory (a 128 MiB
# image and the logs) goes once that is done, unless the scenario failed.
keep=1
cleanup() {
  kill "$(cat "$work/pid" 2>/dev/null)" 2>/dev/null || true
  if ((keep == 0)); then rm -rf "$work"; fi
}
trap cleanup EXIT
sleep 0.5
# The host-side command, run when the guest calls wait_host: SIGKILL, 3 s down, restart on the same port.
# Its exit status is the kill's and the new target's start: a kill that did nothing (or a target that did not
# come back) fails the guest's check of it, so the scenario cannot pass without the outage.
restart="kill -9 \$(cat $work/pid) && sleep 3 && { $bin ${args[*]} >$work/target2.log 2>&1 & echo \$! >$work/pid; } && sleep 0.5 && kill -0 \$(cat $work/pid)"
rc=0
"$interop/kernel-host.sh" --port "$port" --nqn "$nqn" --guest-script "$root/tests/interop/guest-ride-through.sh" \
  -- -H "$restart" || rc=$?
echo "--- target after restart:"; grep -E "controller created|torn down|WARN|ERROR" "$work/target2.log" | head -n 20 || true
# The kernel host came back to the restarted target, not only to the first one.
if ((rc == 0)) && ! grep -q "controller created" "$work/target2.log"; then
  echo "S7: the kernel host never connected to the restarted target"; rc=1
fi
((rc != 0)) || keep=0
exit $rc
