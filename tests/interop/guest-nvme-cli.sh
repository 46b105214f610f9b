# shellcheck shell=sh
# guest-nvme-cli.sh: kernel-host.sh --guest-script for holdfast's target. Connects with the Linux kernel host,
# then asks nvme-cli for every Identify structure, log page and feature the target claims, does a small
# write/read-back, a compare, resets the controller twice (data kept, I/O goes on), and disconnects; fails on any nvme-cli
# error or NVMe error in the kernel log. (Output that is cut short is captured first: `sh -e` sees only the last
# command of a pipeline fail.)
: "${PORT:?}" "${NQN:?}"
ADDR=10.0.2.2
nvme discover -t tcp -a "$ADDR" -s "$PORT"
# shellcheck disable=SC2086
nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" ${CONNECT_OPTS:-} -i 2 -k 5
dev=$(ns_dev "$NQN"); ctrl=$(ctrl_dev "$NQN")
log "id-ctrl"; out=$(nvme id-ctrl "$ctrl"); printf '%s\n' "$out" | head -n 40
log "id-ns"; out=$(nvme id-ns "$dev"); printf '%s\n' "$out" | head -n 30
log "ns-descs"; nvme ns-descs "$dev"
# CNS 08h (I/O Command Set Independent Identify Namespace), which newer Linux hosts read first: NMIC shared, ANA
# group 1, NSTAT ready (byte 14).
log "identify cns 08h"; out=$(nvme admin-passthru "$ctrl" --opcode=0x06 --namespace-id=1 --cdw10=8 --data-len=4096 --read)
printf '%s\n' "$out" | head -n 3
printf '%s\n' "$out" | grep -Eiq '^0000: [0-9a-f]{2} 01 [0-9a-f]{2} [0-9a-f]{2} 01 00 00 00( [0-9a-f]{2}){6} 01 ' ||
  { echo "identify cns 08h: not shared, group 1 and ready"; exit 1; }
log "list-ns"; nvme list-ns "$ctrl"
log "smart-log"; nvme smart-log "$ctrl"
log "error-log"; nvme error-log "$ctrl" -e 4
log "fw-log"; nvme fw-log "$ctrl"
log "effects-log"; out=$(nvme effects-log "$ctrl"); printf '%s\n' "$out" | head -n 20
log "ana-log"; out=$(nvme ana-log "$ctrl"); printf '%s\n' "$out" | head -n 20
printf '%s\n' "$out" | grep -q "optimized" || { echo "ana-log: no group in the optimized state"; exit 1; }
for lid in 0 1 2 3 4 5 0xc 0x80 0xc0; do
  log "get-log $lid"; out=$(nvme get-log "$ctrl" --log-id="$lid" --log-len=512); printf '%s\n' "$out" | head -n 6
done
for f in 1 2 4 5 6 7 0xa 0xb 0xf 0x16 0x80 0x82; do
  log "get-feature $f"; nvme get-feature "$ctrl" -f "$f" -n 1
done
log "get-feature 0x81 (host id)"; nvme get-feature "$ctrl" -f 0x81 --cdw11=1
log "set-feature 0xb (async event config)"; nvme set-feature "$ctrl" -f 0xb -v 0x900
log "set-feature 6 (write cache on)"; nvme set-feature "$ctrl" -f 6 -v 1
log "write/read-back"; rw_check "$dev" 8
log "flush"; nvme flush "$dev" -n 1
log "write-zeroes"; nvme write-zeroes "$dev" -n 1 -s 0 -c 7
log "dsm deallocate"; nvme dsm "$dev" -n 1 -d -s 8 -b 8
# Compare (ONCS bit 0), passed through by the kernel: two blocks as read compare equal; the same with every byte
# changed fail with Compare Failure (SCT 2h, SC 85h: nvme-cli's exit status and message).
log "compare"; bs=$(cat "/sys/block/${dev#/dev/}/queue/logical_block_size")
dd if="$dev" of=/tmp/cmp bs="$bs" count=2 iflag=direct 2>/dev/null
nvme compare "$dev" --start-block=0 --block-count=1 --data-size=$((2 * bs)) --data=/tmp/cmp
tr '\000-\377' '\001-\377\000' </tmp/cmp >/tmp/cmp2
if out=$(nvme compare "$dev" --start-block=0 --block-count=1 --data-size=$((2 * bs)) --data=/tmp/cmp2 2>&1); then
  echo "compare of differing data succeeded: $out"; exit 1
fi
printf '%s\n' "$out"; printf '%s\n' "$out" | grep -qiE "compare.?fail|0x285|0x4285" || { echo "compare: not Compare Failure: $out"; exit 1; }
rm -f /tmp/cmp /tmp/cmp2
# Reservations: register (Persist Through Power Loss on: the namespace is a file), acquire Write Exclusive, the
# report (extended structure: 128-bit host IDs) shows this host holding it with its key and PTPL on, I/O goes on
# (the holder writes), release, unregister turning PTPL off.
log "resv-register"; nvme resv-register "$dev" -n 1 --nrkey=0xa1 --rrega=0 --cptpl=3
log "resv-acquire"; nvme resv-acquire "$dev" -n 1 --crkey=0xa1 --rtype=1 --racqa=0
log "resv-report"; out=$(nvme resv-report "$dev" -n 1 --eds); printf '%s\n' "$out"
printf '%s\n' "$out" | grep -Eq "rtype *: *1" || { echo "resv-report: no Write Exclusive reservation"; exit 1; }
printf '%s\n' "$out" | grep -Eq "rkey *: *(0x)?a1" || { echo "resv-report: no registrant with key a1"; exit 1; }
printf '%s\n' "$out" | grep -Eq "ptpls *: *1" || { echo "resv-report: persist through power loss not on"; exit 1; }
log "write/read-back as the holder"; rw_check "$dev" 2
log "resv-release"; nvme resv-release "$dev" -n 1 --crkey=0xa1 --rtype=1 --rrela=0
log "resv-register (unregister)"; nvme resv-register "$dev" -n 1 --crkey=0xa1 --rrega=1 --cptpl=2
out=$(nvme resv-report "$dev" -n 1 --eds); printf '%s\n' "$out" | grep -Eq "regctl *: *0" || { echo "resv-report after unregistering: $out"; exit 1; }
# Checked here, before the resets: the kernel logs each as "resetting controller", which kernel_errors counts.
kernel_errors
# A controller reset: the Linux host disables the controller (CC.EN 0), ends the association and makes a new one
# (new admin and I/O queues); what was written before must read back after, and I/O must go on.
dd if=/dev/urandom of=/tmp/pat bs=1M count=2 2>/dev/null
dd if=/tmp/pat of="$dev" bs=1M count=2 oflag=direct conv=fsync 2>/dev/null
for n in 1 2; do
  log "reset $n"; nvme reset "$ctrl"
  i=0; while [ "$(cat "/sys/class/nvme/${ctrl#/dev/}/state")" != live ]; do
    i=$((i + 1)); [ $i -le 100 ] || { echo "controller not live 10 s after reset $n"; exit 1; }; sleep 0.1
  done
  dd if="$dev" of=/tmp/back bs=1M count=2 iflag=direct 2>/dev/null
  cmp /tmp/pat /tmp/back; echo "reset $n: data kept"
done
rm -f /tmp/pat /tmp/back
log "write/read-back after the resets"; rw_check "$dev" 4
log "ns-rescan"; nvme ns-rescan "$ctrl"
log "disconnect"; nvme disconnect -n "$NQN"
# Also the host's "clamping down" warnings: at every discovery while our discovery controller's MAXCMD and
# CAP.MQES were 32.
if dmesg | grep -v "resetting controller" | grep -iE "nvme.*(error|failed|timeout|reset|clamping)|I/O error|Buffer I/O"; then
  echo "the kernel logged errors or warnings"; exit 1
fi
echo NVME-CLI-PASSED
