# shellcheck shell=sh
# guest-ride-through.sh: kernel-host.sh --guest-script for scenario S7. The Linux kernel host mounts ext4 on
# holdfast's target, keeps writing files while the host side (vm.sh -H) kills the target with SIGKILL and
# restarts it a few seconds later, then verifies every file, before and after a remount.
: "${PORT:?}" "${NQN:?}"
ADDR=10.0.2.2
nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" --reconnect-delay=1 --ctrl-loss-tmo=60 -k 5
dev=$(ns_dev "$NQN")
mkfs.ext4 -q -F "$dev"; mkdir -p /mnt/t; mount "$dev" /mnt/t
dd if=/dev/urandom of=/tmp/seed bs=1M count=2 2>/dev/null
i=0; while [ $i -lt 4 ]; do cp /tmp/seed "/mnt/t/before$i"; i=$((i + 1)); done; sync
log "writing files while the target is killed and restarted"
# The writer cycles over 16 names (32 MiB), so a fast machine never fills the 128 MiB filesystem; any failed
# write is reported and fails the scenario (a write error across the outage is exactly what S7 must not see).
# SIGPIPE is ignored in the writer: the Linux 6.1 host's nvme-tcp sends on its socket from the task that
# submits the I/O when the queue is idle, without MSG_NOSIGNAL, so a send that meets the killed target's reset
# ("failed to send request -32" in the kernel log) raises SIGPIPE in that task, here dd (seen: dd killed, exit
# 141, its write otherwise requeued and completed after the reconnect). That is the kernel host's doing, not
# the target's; every other failure of a write still fails the scenario.
( trap '' PIPE; j=0; while [ ! -f /tmp/stop ]; do
    # dd's exit status is kept: over 128 is a signal (busybox's dd prints nothing when killed, or when the
    # shell could not start it at all).
    st=0; dd if=/tmp/seed of="/mnt/t/during$((j % 16))" bs=1M conv=fsync 2>/tmp/dd.err || st=$?
    if [ "$st" != 0 ]; then
      echo "write $j failed (dd exit $st at $(now) s): $(cat /tmp/dd.err)" >/tmp/writer_failed; break
    fi
    j=$((j + 1))
  done
  echo "$j" >/tmp/during_count ) &
sleep 1
t0=$(now)
rc=0; wait_host || rc=$?
log "host side done (exit $rc) after $(elapsed "$t0") s; writing on for 2 s"
sleep 2; touch /tmp/stop; wait
[ "$rc" = 0 ] || exit "$rc"
if [ -f /tmp/writer_failed ]; then
  log "writer: $(cat /tmp/writer_failed)"; df -h /mnt/t; free; dmesg | grep -v "requeuing I/O" | tail -n 30; exit 1
fi
log "$(cat /tmp/during_count) file writes (2 MiB, fsync) across the outage"; sync
for f in /mnt/t/before* /mnt/t/during*; do cmp /tmp/seed "$f"; done
umount /mnt/t; mount "$dev" /mnt/t
for f in /mnt/t/before* /mnt/t/during*; do cmp /tmp/seed "$f"; done
echo "ride-through: $(ls /mnt/t | wc -l) files verified after remount"
umount /mnt/t
nvme disconnect -n "$NQN"
dmesg | grep -E "nvme|EXT4" | tail -n 20
if dmesg | grep -E "I/O error|Buffer I/O|EXT4-fs error|identifiers changed"; then echo "kernel logged I/O errors"; exit 1; fi
echo RIDE-THROUGH-PASSED
