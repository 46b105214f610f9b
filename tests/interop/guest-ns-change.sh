# shellcheck shell=sh
# guest-ns-change.sh: kernel-host.sh --guest-script for holdfast's target, with a host command (-H) that
# reloads the target's configuration: namespace 1 (a file) grows from 64 to 96 MiB and a RAM namespace 2 is
# added. The Linux host must learn both from the target's Namespace Attribute Changed notice (it reads the
# Changed Namespace List and identifies the namespaces again) without a reconnect: namespace 1's new capacity
# shows, with the data written before it still there, and namespace 2 appears and takes I/O.
: "${PORT:?}" "${NQN:?}"
ADDR=10.0.2.2
nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" -i 2 -k 5
dev=$(ns_dev "$NQN"); blk=${dev#/dev/}
before=$(cat "/sys/block/$blk/size")
log "namespace 1: $before sectors before the reload"
[ "$before" -eq $((64 * 2048)) ] || { echo "expected 64 MiB to begin with"; exit 1; }
dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null
dd if=/tmp/pat of="$dev" bs=1M count=4 oflag=direct conv=fsync 2>/dev/null
rc=0; wait_host || rc=$?
[ "$rc" -eq 0 ] || { echo "the host's reload failed ($rc)"; exit 1; }
t0=$(now); i=0
while [ "$(cat "/sys/block/$blk/size")" -ne $((96 * 2048)) ]; do
  i=$((i + 1)); [ $i -le 100 ] || { echo "namespace 1 still $(cat "/sys/block/$blk/size") sectors 10 s after the reload"; exit 1; }
  sleep 0.1
done
log "namespace 1: $(cat "/sys/block/$blk/size") sectors $(elapsed "$t0") s after the reload"
dd if="$dev" of=/tmp/back bs=1M count=4 iflag=direct 2>/dev/null
cmp /tmp/pat /tmp/back; echo "namespace 1: data kept"
# Past the old end: the grown part takes I/O.
dd if=/tmp/pat of="$dev" bs=1M count=4 seek=80 oflag=direct conv=fsync 2>/dev/null
dd if="$dev" of=/tmp/back bs=1M count=4 skip=80 iflag=direct 2>/dev/null
cmp /tmp/pat /tmp/back; echo "namespace 1: the grown part reads back"
dev2=${dev%n1}n2; i=0
while [ ! -b "$dev2" ]; do
  i=$((i + 1)); [ $i -le 100 ] || { echo "no $dev2 10 s after the reload"; exit 1; }
  sleep 0.1
done
log "namespace 2: $dev2, $(cat "/sys/block/${dev2#/dev/}/size") sectors"
rw_check "$dev2" 4
rm -f /tmp/pat /tmp/back
nvme disconnect -n "$NQN"
kernel_errors
echo NS-CHANGE-PASSED
