#!/usr/bin/env bash
# interop-kernel-target.sh: holdfast's host against the Linux kernel NVMe/TCP target (nvmet-tcp in a VM):
# discover, identify, write + read back 32 MiB through the CLI and compare, and bench --verify for 10 s with
# 0 errors and 0 mismatches, write-zeroes (read back as zeroes), flush, and the SMART and Error Information log
# pages through `log`; 512-byte blocks with digests and SQ flow control disabled (--disable-sqflow, as
# nvme-cli connects after discovery: the kernel target then completes reads with their C2HData alone, SUCCESS
# flag set, and the capture must show such PDUs), 4096-byte blocks with neither. With digests, a short
# write/read/bench is also captured and decoded by Wireshark (scripts/nvme-tcp-check-loopback.sh).
# Ride-through: bench --verify for 30 s while the kernel target goes away twice for 3 s (its port removed, then
# the subsystem off a listening port so that Connects are refused; tests/interop/guest-target-outage.sh): 0
# errors, 0 mismatches, 2 outages, the controller not lost.
# DH-HMAC-CHAP (kernel-target-dhchap): the kernel target requires in-band authentication of our host NQN
# (configfs hosts/NQN/dhchap_key, dhchap_ctrl_key, dhchap_hash; tests/interop/guest-target-dhchap.sh); our host
# authenticates with --dhchap-secret and benches with --verify, then bidirectionally (--dhchap-ctrl-secret);
# a wrong secret, a wrong controller secret and no secret are refused with their reasons. Debian's 6.1 kernel
# has no NVMe in-band authentication, so this case boots Debian's 6.12 (scripts/lib/interop-612.sh).
# ANA (kernel-target-ana): bench --verify for 20 s while nvmet puts the namespace's ANA group in the Change
# state twice for 3 s (tests/interop/guest-target-ana.sh): 0 errors, 0 mismatches, no outage.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
interop=${INTEROP_DIR:-$root/../shared/interop}
bin=${HOLDFAST_BIN:-$root/target/release/holdfast}
logs=${INTEROP_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/holdfast-kt.XXXXXX")}
nqn=nqn.2014-08.org.kernel:interop
pass=0 fail=0
# The last lines of a VM case's guest console (vm.sh -l), kept for a failed case: a guest that went away (a
# kernel panic ends QEMU, -no-reboot) says why only there.
console_tail() {
  [[ -s $logs/$1-console.log ]] || return 0
  echo "    guest console ($logs/$1-console.log), last 40 lines:"; tail -n 40 "$logs/$1-console.log" | sed 's/^/    | /'
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The host-side check, run while the kernel target is up on 127.0.0.1:$1 ($2 = extra flags, e.g. --digests).
# One check a line, in it and in outage.sh below: set -e does not stop at a failed command followed by && (a
# failed `cmp A B && echo same` goes on), so such a check could not fail the script.
cat >"$logs/check.sh" <<EOS
set -euo pipefail
p=\$1; shift
b=$bin
d=\$(\$b discover 127.0.0.1:\$p --json); grep -q '"subnqn": "$nqn"' <<<"\$d"
i=\$(\$b identify --addr 127.0.0.1:\$p --nqn $nqn --nsid 1 "\$@" --json); grep -q '"mn": "Linux"' <<<"\$i"
head -c 33554432 /dev/urandom >$logs/w.bin
\$b write --addr 127.0.0.1:\$p --nqn $nqn --nsid 1 --offset 1048576 --input $logs/w.bin "\$@"
\$b read --addr 127.0.0.1:\$p --nqn $nqn --nsid 1 --offset 1048576 --length 33554432 --output $logs/r.bin "\$@"
cmp $logs/w.bin $logs/r.bin
echo "32 MiB written and read back identical"
# Write Zeroes inside what was just written (so the zeroes are its doing), then Flush and both log pages.
\$b write-zeroes --addr 127.0.0.1:\$p --nqn $nqn --nsid 1 --offset 2097152 --length 65536 "\$@"
\$b read --addr 127.0.0.1:\$p --nqn $nqn --nsid 1 --offset 2097152 --length 65536 --output $logs/z.bin "\$@"
head -c 65536 /dev/zero | cmp - $logs/z.bin
\$b flush --addr 127.0.0.1:\$p --nqn $nqn --nsid 1 "\$@"
\$b log --addr 127.0.0.1:\$p --nqn $nqn --page smart --json "\$@" >$logs/smart.json
python3 -c 'import json, sys; v = json.load(open(sys.argv[1])); assert v["host_write_commands"] > 0 and v["host_read_commands"] > 0, v' $logs/smart.json
\$b log --addr 127.0.0.1:\$p --nqn $nqn --page error --json "\$@" >/dev/null
echo "64 KiB write-zeroed read back as zeroes; flush; SMART and Error Information logs decoded"
if [[ " \$* " == *" --digests "* ]]; then  # our host's own PDUs, decoded by Wireshark with digests checked
  # Captured again (once) if tcpdump dropped packets: a capture with a hole is no record of the wire.
  for attempt in 1 2; do
    tcpdump -i lo -s 0 -B 32768 -U -w $logs/host-digests.pcap "tcp port \$p" >$logs/tcpdump.log 2>&1 & dpid=\$!
    sleep 0.5
    head -c 4194304 $logs/w.bin >$logs/w4.bin
    \$b write --addr 127.0.0.1:\$p --nqn $nqn --nsid 1 --offset 0 --input $logs/w4.bin "\$@"
    \$b read --addr 127.0.0.1:\$p --nqn $nqn --nsid 1 --offset 0 --length 4194304 --output $logs/r4.bin "\$@"
    \$b bench --addr 127.0.0.1:\$p --nqn $nqn --nsid 1 --workload randrw --bs 4096 --qd 16 --queues 2 --time 2 --verify "\$@" >/dev/null
    sleep 0.3; kill \$dpid; wait \$dpid || true
    cmp $logs/w4.bin $logs/r4.bin
    grep -q '^0 packets dropped by kernel' $logs/tcpdump.log && break
    echo "tcpdump: \$(grep 'dropped by kernel' $logs/tcpdump.log || echo 'no drop count'); capturing again"
    [[ \$attempt == 1 ]] || { echo "the capture is incomplete twice: no verdict on it"; exit 1; }
  done
  expect=(); [[ " \$* " == *" --disable-sqflow "* ]] && expect=(--expect-c2h-success)
  $here/nvme-tcp-check-loopback.sh $logs/host-digests.pcap \$p \${expect[@]+"\${expect[@]}"}
fi
\$b bench --addr 127.0.0.1:\$p --nqn $nqn --nsid 1 --workload randrw --bs 4096 --qd 16 --queues 2 --time 10 --verify --json "\$@" | tee $logs/bench.json
grep -q '"errors":0,' $logs/bench.json
grep -q '"verify_mismatches":0,' $logs/bench.json
EOS

run() {  # run NAME BLOCK FLAGS...
  local name=$1 block=$2; shift 2
  local port rc=0; port=$(free_port)
  echo "=== $name"
  "$interop/kernel-target.sh" --port "$port" --block "$block" -- bash "$logs/check.sh" "$port" "$@" >"$logs/$name.log" 2>&1 || rc=$?
  if ((rc == 0)); then pass=$((pass + 1)); echo "    pass"; grep -E "identical|write-zeroed|\"iops\"|^nvme-tcp-check" "$logs/$name.log" | sed 's/^/    /'
  else fail=$((fail + 1)); echo "    FAIL (exit $rc)"; tail -n 40 "$logs/$name.log" | sed 's/^/    /'; console_tail "$name"; fi
}

# Ride-through against the kernel target: its guest script takes the target away twice while this runs.
cat >"$logs/outage.sh" <<EOS
set -euo pipefail
$bin bench --addr 127.0.0.1:\$1 --nqn $nqn --nsid 1 --workload randrw --bs 4096 --qd 16 --queues 2 --time 30 --verify \\
  --reconnect-delay-ms 500 --ctrl-loss-tmo-ms 60000 --kato-ms 5000 --json | tee $logs/outage.json
grep -q '"errors":0,' $logs/outage.json
grep -q '"verify_mismatches":0,' $logs/outage.json
grep -q '"outages":2,' $logs/outage.json
grep -q '"controller_lost":null,' $logs/outage.json
EOS

run_outage() {
  run_vm_case kernel-target-ride-through outage guest-target-outage.sh "connection restored|\"iops\"" -e OUTAGES=2
}

# ANA transitions at the kernel target: its guest script puts the namespace's ANA group in the Change state
# twice for 3 s while this runs; every I/O then meets Asymmetric Access Transition and must wait it out.
cat >"$logs/ana.sh" <<EOS
set -euo pipefail
$bin bench --addr 127.0.0.1:\$1 --nqn $nqn --nsid 1 --workload randrw --bs 4096 --qd 16 --queues 2 --time 20 --verify \\
  --json | tee $logs/ana.json
grep -q '"errors":0,' $logs/ana.json
grep -q '"verify_mismatches":0,' $logs/ana.json
grep -q '"outages":0,' $logs/ana.json
EOS

run_ana() { run_vm_case kernel-target-ana ana guest-target-ana.sh "transition [0-9]|\"iops\""; }

# run_vm_case NAME HOST_SCRIPT GUEST_SCRIPT SHOW [vm.sh -e ...]: the kernel target in a VM running
# tests/interop/GUEST_SCRIPT while $logs/HOST_SCRIPT.sh runs here against it; on a pass, the lines of its log and
# of the guest's console that match SHOW.
run_vm_case() {
  local name=$1 host=$2 guest=$3 show=$4 port rc=0; shift 4; port=$(free_port)
  echo "=== $name"
  "$interop/vm.sh" -q -l "$logs/$name-console.log" -t 600 -p "$port:4420" -e "NQN=$nqn" -e SIZE_MIB=64 -e BLOCK=4096 "$@" \
    -H "bash $logs/$host.sh $port" "$root/tests/interop/$guest" >"$logs/$name.log" 2>&1 || rc=$?
  if ((rc == 0)); then pass=$((pass + 1)); echo "    pass"
    grep -hE "$show" "$logs/$name-console.log" "$logs/$name.log" | sed 's/^/    /'
  else fail=$((fail + 1)); echo "    FAIL (exit $rc)"; tail -n 40 "$logs/$name.log" | sed 's/^/    /'; console_tail "$name"; fi
}

# interop_612, $INTEROP_612_CACHE: Debian's 6.12 kernel (NVMe in-band authentication).
# shellcheck source=lib/interop-612.sh
source "$here/lib/interop-612.sh"

# The host side of kernel-target-dhchap, run here while the kernel target requires authentication.
cat >"$logs/dhchap.sh" <<EOS
set -euo pipefail
p=\$1 hostnqn=\$2 key=\$3 ckey=\$4 wrong=\$5
b=$bin
a=(--addr 127.0.0.1:\$p --nqn $nqn --hostnqn \$hostnqn)
\$b bench "\${a[@]}" --nsid 1 --workload randrw --bs 4096 --qd 16 --queues 2 --time 4 --verify --json \\
  --ctrl-loss-tmo-ms 20000 --dhchap-secret "\$key" | tee $logs/dhchap-uni.json
grep -q '"errors":0,' $logs/dhchap-uni.json
grep -q '"verify_mismatches":0,' $logs/dhchap-uni.json
echo "dhchap: unidirectional: bench --verify, 0 errors, 0 mismatches"
\$b bench "\${a[@]}" --nsid 1 --workload randrw --bs 4096 --qd 16 --queues 2 --time 4 --verify --json \\
  --ctrl-loss-tmo-ms 20000 --dhchap-secret "\$key" --dhchap-ctrl-secret "\$ckey" | tee $logs/dhchap-bi.json
grep -q '"errors":0,' $logs/dhchap-bi.json
grep -q '"verify_mismatches":0,' $logs/dhchap-bi.json
echo "dhchap: bidirectional: bench --verify, 0 errors, 0 mismatches"
refused() {  # refused WHAT PATTERN FLAGS...: identify must fail, saying PATTERN, and never print a secret
  local what=\$1 pattern=\$2 out; shift 2
  if out=\$(\$b identify "\${a[@]}" --nsid 1 "\$@" 2>&1); then echo "dhchap: \$what connected"; return 1; fi
  grep -qF "\$pattern" <<<"\$out" || { echo "dhchap: \$what: unexpected error: \$out"; return 1; }
  if grep -qF -e "\${key:10:20}" -e "\${ckey:10:20}" -e "\${wrong:10:20}" <<<"\$out"; then echo "dhchap: \$what: a secret was printed"; return 1; fi
  echo "dhchap: \$what refused: \$(tail -n 1 <<<"\$out")"
}
refused "a wrong secret" "authentication failed: the controller refused the host's response" --dhchap-secret "\$wrong"
refused "a wrong controller secret" "does not match --dhchap-ctrl-secret" --dhchap-secret "\$key" --dhchap-ctrl-secret "\$wrong"
refused "no secret" "give --dhchap-secret"
echo TARGET-DHCHAP-PASSED
EOS

run_dhchap() {  # run_dhchap NAME DHGROUP: nvmet's dhchap_dhgroup for the host (null: its default)
  local name=$1 dhgroup=$2 port rc=0 dir keys key ckey wrong
  local hostnqn=nqn.2014-08.org.nvmexpress:uuid:5b1f6e0e-7d7a-4f4e-9a43-0d2f1a6c0002
  echo "=== $name"
  dir=$(interop_612 2>"$logs/$name-setup.log") || { fail=$((fail + 1)); echo "    FAIL: the 6.12 interop cache"; tail -n 20 "$logs/$name-setup.log" | sed 's/^/    /'; return; }
  # Keys as `nvme gen-dhchap-key` makes them: DHHC-1:XX:base64(key || CRC-32 little endian):. The host key is
  # transformed with SHA-256 (01), the controller key with SHA-512 (03, 64 bytes); a third, wrong one.
  keys=$(python3 -c '
import base64, os, struct, zlib
for xx, n in ((1, 32), (3, 64), (0, 32)):
    k = os.urandom(n)
    print("DHHC-1:%02d:%s:" % (xx, base64.b64encode(k + struct.pack("<I", zlib.crc32(k))).decode()))')
  { read -r key; read -r ckey; read -r wrong; } <<<"$keys"
  port=$(free_port)
  NVME_INTEROP_CACHE=$INTEROP_612_CACHE "$dir/vm.sh" -q -l "$logs/$name-console.log" -t 600 -p "$port:4420" -e "NQN=$nqn" -e SIZE_MIB=64 -e BLOCK=4096 \
    -e "HOSTNQN=$hostnqn" -e "KEY=$key" -e "CKEY=$ckey" -e "HASH=hmac(sha384)" -e "DHGROUP=$dhgroup" \
    -H "bash $logs/dhchap.sh $port $hostnqn '$key' '$ckey' '$wrong'" "$root/tests/interop/guest-target-dhchap.sh" \
    >"$logs/$name.log" 2>&1 || rc=$?
  # The group used must be the one nvmet was given: our host names it when the admin queue authenticates.
  if ((rc == 0)) && ! grep -qE "DH-HMAC-CHAP: authenticated .*dhgroup=\"?$dhgroup\"? " "$logs/$name.log"; then
    echo "    our host did not log authenticating with DH group $dhgroup"; rc=1
  fi
  if ((rc == 0)) && grep -q TARGET-DHCHAP-PASSED "$logs/$name.log"; then
    pass=$((pass + 1)); echo "    pass"; { grep -m 1 "DH-HMAC-CHAP: authenticated" "$logs/$name.log"; grep -E "^dhchap:|\"iops\"|target-dhchap:|DH group" "$logs/$name.log"; } | cut -c1-240 | sed 's/^/    /'
  else fail=$((fail + 1)); echo "    FAIL (exit $rc)"; tail -n 40 "$logs/$name.log" | sed 's/^/    /'; console_tail "$name"; fi
}

"$interop/setup.sh" >/dev/null
command -v tcpdump >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tcpdump >/dev/null; }
# Arguments, if any, name the cases to run (kernel-target-4k ...); none runs them all.
cases=" $* "
case_on() { [[ $cases == "  " || $cases == *" $1 "* ]]; }
# A name that is no case would run nothing and pass: refused.
for c in "$@"; do
  [[ " kernel-target-512-digests-sqflow-off kernel-target-4k kernel-target-ride-through kernel-target-dhchap kernel-target-dhchap-ffdhe kernel-target-ana " == *" $c "* ]] || { echo "no interop case $c (kernel-target-512-digests-sqflow-off kernel-target-4k kernel-target-ride-through kernel-target-dhchap kernel-target-dhchap-ffdhe kernel-target-ana)"; exit 2; }
done
if case_on kernel-target-512-digests-sqflow-off; then run kernel-target-512-digests-sqflow-off 512 --digests --disable-sqflow; fi
if case_on kernel-target-4k; then run kernel-target-4k 4096; fi
if case_on kernel-target-ride-through; then run_outage; fi
if case_on kernel-target-dhchap; then run_dhchap kernel-target-dhchap null; fi
if case_on kernel-target-dhchap-ffdhe; then run_dhchap kernel-target-dhchap-ffdhe ffdhe4096; fi
if case_on kernel-target-ana; then run_ana; fi
echo "interop (holdfast host -> kernel target): $pass passed, $fail failed (logs in $logs)"
# The data files (images, what was written and read back) go either way; the logs stay only for a failure.
find "$logs" -name '*.img' -o -name '*.bin' | xargs -r rm -f
((fail == 0)) || exit 1
[[ -n ${INTEROP_LOGS:-} ]] || rm -rf "$logs"
