# shellcheck shell=sh
# guest-ana.sh: kernel-host.sh --guest-script for holdfast's target serving one subsystem on two ports with
# Asymmetric Namespace Access: port PORT gives the namespace's group the state optimized, port PORT2
# inaccessible. The Linux host (native multipath) connects both paths into one disk, must see each path's
# state in sysfs and send I/O down the optimized one; then a host command (-H) reloads the target with the
# states swapped, while a writer runs: the host must learn the change from the target's ANA Change notice
# (or the inaccessible status of an I/O) and carry on through the other path, with no I/O error and the data
# written before and during the swap intact.
: "${PORT:?}" "${PORT2:?}" "${NQN:?}"
ADDR=10.0.2.2
[ "$(cat /sys/module/nvme_core/parameters/multipath)" = Y ] || { echo "this kernel's native multipath is off"; exit 1; }
nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" -i 1 -k 5
nvme connect -t tcp -a "$ADDR" -s "$PORT2" -n "$NQN" -i 1 -k 5
dev=$(ns_dev "$NQN")
# path_state PORT: the ANA state of namespace 1's path through the controller connected to PORT.
path_state() {
  for c in /sys/class/nvme/nvme*; do
    case "$(cat "$c/address" 2>/dev/null)" in *"trsvcid=$1"*) ;; *) continue ;; esac
    for p in "$c"/nvme*c*n1; do cat "$p/ana_state"; return 0; done
  done
  echo none
}
# wait_states S1 S2: until the paths through PORT and PORT2 are S1 and S2 (10 s at most).
wait_states() {
  i=0
  while [ "$(path_state "$PORT")" != "$1" ] || [ "$(path_state "$PORT2")" != "$2" ]; do
    i=$((i + 1)); [ $i -le 100 ] || { echo "paths: $(path_state "$PORT") / $(path_state "$PORT2"), not $1 / $2"; return 1; }
    sleep 0.1
  done
}
wait_states optimized inaccessible
# One disk (the multipath head) and a hidden path node per controller (nvmeXcYn1).
n=$(ls -d /sys/block/nvme*c*n1 2>/dev/null | wc -l)
log "ana: $dev has $n paths: port $PORT $(path_state "$PORT"), port $PORT2 $(path_state "$PORT2")"
[ "$n" -eq 2 ] || { echo "expected one disk with two paths"; exit 1; }
rw_check "$dev" 8
dd if=/dev/urandom of=/tmp/pat bs=1M count=16 2>/dev/null
dd if=/tmp/pat of="$dev" bs=1M count=16 oflag=direct conv=fsync 2>/dev/null
# A writer through the swap: 16 MiB further on, 1 MiB at a time, then read back.
( dd if=/tmp/pat of="$dev" bs=64k count=256 seek=512 oflag=direct conv=fsync 2>/tmp/writer.err; echo $? >/tmp/writer.rc ) &
writer=$!
t0=$(now)
rc=0; wait_host || rc=$?
[ "$rc" -eq 0 ] || { echo "the host's reload failed ($rc)"; exit 1; }
wait_states inaccessible optimized
log "ana: swapped $(elapsed "$t0") s after the reload began: port $PORT $(path_state "$PORT"), port $PORT2 $(path_state "$PORT2")"
wait $writer
[ "$(cat /tmp/writer.rc)" = 0 ] || { echo "the writer failed through the swap: $(cat /tmp/writer.err)"; exit 1; }
dd if="$dev" of=/tmp/back bs=1M count=16 iflag=direct 2>/dev/null
cmp /tmp/pat /tmp/back; echo "ana: data written before the swap reads back through the other path"
dd if="$dev" of=/tmp/back bs=64k count=256 skip=512 iflag=direct 2>/dev/null
cmp /tmp/pat /tmp/back; echo "ana: data written during the swap reads back"
rw_check "$dev" 8
rm -f /tmp/pat /tmp/back
nvme disconnect -n "$NQN"
kernel_errors
echo ANA-PASSED
