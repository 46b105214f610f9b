#!/usr/bin/env bash
# interop-nbd-device.sh: `holdfast nbd --device` with the Linux kernel's NBD client (in the interop VM):
# the bridge, in the guest, attaches holdfast's target here (file namespace, 4096-byte blocks) to /dev/nbd0;
# ext4 on it rides through a SIGKILL of the target and a restart 35 s later, O_DIRECT data reads back (also
# across a SIGSTOP of the bridge), a second bridge on the running device is refused, SIGTERM detaches it;
# read-only, a forced detach, the bridge killed, and fail-fast beyond the policy on a second device
# (tests/interop/guest-nbd-device.sh).
# The interop VM's kernel has no nbd module in its image: nbd.ko is taken from the same Debian kernel package
# (downloaded once, kept in the interop cache).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
interop=${INTEROP_DIR:-$root/../shared/interop}
cache=${NVME_INTEROP_CACHE:-${INTEROP_CACHE:-$HOME/.cache/nvme-interop}}
bin=${HOLDFAST_BIN:-$root/target/release/holdfast}
work=$(mktemp -d "${TMPDIR:-/tmp}/holdfast-nbd-device.XXXXXX")
nqn=nqn.2026-01.io.holdfast:nbd-device
keep=1
cleanup() {
  kill "$(cat "$work/pid" 2>/dev/null)" 2>/dev/null || true
  if ((keep == 0)); then rm -rf "$work"; fi
}
trap cleanup EXIT

"$interop/setup.sh" >/dev/null
kver=$(cat "$cache/kernel.version")
ko=$cache/holdfast-nbd-$kver.ko
if [[ ! -f $ko ]]; then
  mkdir -p "$work/deb"; chown _apt "$work/deb" 2>/dev/null || true
  (cd "$work/deb" && apt-get download -q "linux-image-$kver" >/dev/null 2>&1) ||
    { apt-get update -qq; (cd "$work/deb" && apt-get download -q "linux-image-$kver" >/dev/null); }
  dpkg-deb --fsys-tarfile "$work"/deb/linux-image-"$kver"_*.deb |
    tar -x -C "$work/deb" --wildcards '*/drivers/block/nbd.ko*'
  m=$(find "$work/deb" -name 'nbd.ko*' | head -n 1)
  [[ -n $m ]] || { echo "no nbd.ko in linux-image-$kver"; exit 1; }
  case $m in *.xz) xz -dc "$m" >"$ko.tmp" ;; *.zst) zstd -qdc "$m" >"$ko.tmp" ;; *) cp "$m" "$ko.tmp" ;; esac
  mv "$ko.tmp" "$ko"; rm -rf "$work/deb"
fi
cp "$ko" "$work/nbd.ko"
# The guest gets the bridge without its debug information (a smaller initramfs).
strip -o "$work/holdfast" "$bin"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
args=(target --listen "127.0.0.1:$port" --nqn "$nqn" --file "$work/ns.img" --size-mib 128 --block-size 4096
  --reconnect-delay-ms 500)
"$bin" "${args[@]}" >"$work/target1.log" 2>&1 &
echo $! >"$work/pid"
disown  # killed by the restart below; no "Killed" notice from this shell
for _ in $(seq 100); do grep -q '^connect:' "$work/target1.log" 2>/dev/null && break; sleep 0.05; done
# Run here when the guest calls wait_host: SIGKILL, 35 s down (past the block layer's 30 s request timeout),
# restart on the same port; fails (and so fails the guest's check) if the kill did nothing or the target did
# not come back.
restart="kill -9 \$(cat $work/pid) && sleep 35 && { $bin ${args[*]} >$work/target2.log 2>&1 & echo \$! >$work/pid; } && sleep 0.5 && kill -0 \$(cat $work/pid)"
rc=0
"$interop/vm.sh" -g -t 400 -f "$work/holdfast" -f "$work/nbd.ko" -e "PORT=$port" -e "NQN=$nqn" -H "$restart" \
  "$root/tests/interop/guest-nbd-device.sh" >"$work/guest.log" 2>&1 || rc=$?
grep -E "^attached:|^detached:|^== |files verified|NBD-DEVICE-PASSED|WARN|ERROR" "$work/guest.log" | sed 's/^/    /' || true
if ((rc == 0)) && ! grep -q "NBD-DEVICE-PASSED" "$work/guest.log"; then rc=1; fi
# The bridge came back to the restarted target, not only to the first one.
if ((rc == 0)) && ! grep -q "controller created" "$work/target2.log"; then
  echo "the bridge never connected to the restarted target"; rc=1
fi
if ((rc != 0)); then
  echo "interop-nbd-device: FAIL (exit $rc); guest log $work/guest.log:"; tail -n 60 "$work/guest.log"
  exit "$rc"
fi
echo "interop-nbd-device: passed"
keep=0
