# shellcheck shell=sh
# guest-nbd-device.sh: vm.sh guest script for scripts/interop-nbd-device.sh. holdfast's NBD bridge, run in the
# guest, attaches holdfast's target (on this machine, reached as 10.0.2.2:$PORT) to the Linux kernel's NBD
# device /dev/nbd0: a second bridge on the running device refused; O_DIRECT data written and read back; the
# bridge SIGSTOPped for 2 s under a write, which completes; a SIGHUP ignored; ext4, files written while the host side (vm.sh -H)
# kills the target and restarts it 35 s later (longer than the block layer's 30 s request timeout, which must
# not fail anything), every file verified before and after a remount; SIGTERM detaches the device and the
# bridge exits 0; the kernel logs no I/O error. Then on /dev/nbd1, against a target in the guest: read-only;
# a second SIGTERM with a write stuck forces the detach (the write fails, the bridge exits non-zero within
# seconds); the bridge SIGKILLed stops the device; beyond the policy, a target killed for good makes a write
# fail with EIO.
: "${PORT:?}" "${NQN:?}"
insmod /opt/nbd.ko nbds_max=2
[ -b /dev/nbd0 ] || { log "no /dev/nbd0 after insmod"; exit 1; }
/opt/holdfast nbd --addr "10.0.2.2:$PORT" --nqn "$NQN" --device /dev/nbd0 --reconnect-delay-ms 500 \
  >/tmp/bridge.log 2>&1 &
bp=$!
i=0; until grep -q '^attached:' /tmp/bridge.log; do
  i=$((i + 1)); [ $i -lt 600 ] && kill -0 $bp 2>/dev/null || { log "bridge did not attach"; cat /tmp/bridge.log; exit 1; }
  sleep 0.1
done
grep '^attached:' /tmp/bridge.log
log "device: $(cat /sys/block/nbd0/size) sectors, logical block $(cat /sys/block/nbd0/queue/logical_block_size), pid $(cat /sys/block/nbd0/pid)"
# A second bridge must not take the running device over (nor resize or reset it).
if /opt/holdfast nbd --addr "10.0.2.2:$PORT" --nqn "$NQN" --device /dev/nbd0 >/tmp/second.log 2>&1; then
  log "a second bridge attached to a running device"; exit 1
fi
grep -q "in use by another NBD client" /tmp/second.log || { log "second bridge: $(cat /tmp/second.log)"; exit 1; }
log "second bridge refused: $(tail -n 1 /tmp/second.log)"

dd if=/dev/urandom of=/tmp/direct bs=1M count=8 2>/dev/null
dd if=/tmp/direct of=/dev/nbd0 bs=1M seek=100 oflag=direct 2>/dev/null
dd if=/dev/nbd0 of=/tmp/direct.back bs=1M skip=100 count=8 iflag=direct 2>/dev/null
cmp /tmp/direct /tmp/direct.back || { log "8 MiB written with O_DIRECT read back different"; exit 1; }
log "8 MiB written and read back with O_DIRECT"
# The bridge stopped (SIGSTOP, as a debugger or a tracer attaching does) under a write, then continued: the
# write completes. (The task waiting in NBD_DO_IT is in a process of its own; were it the bridge's, the kernel
# would shut the device down.)
( dd if=/tmp/direct of=/dev/nbd0 bs=1M seek=100 oflag=direct 2>/dev/null && echo ok >/tmp/stopped_write ) &
sw=$!
kill -STOP $bp; sleep 2; kill -CONT $bp; wait $sw
[ -f /tmp/stopped_write ] || { log "a write across a SIGSTOP of the bridge failed"; dmesg | tail -n 5; exit 1; }
log "the bridge stopped for 2 s under a write and continued: the write completed"
# A closed terminal (SIGHUP) leaves the device attached.
kill -HUP $bp; sleep 0.5
kill -0 $bp 2>/dev/null || { log "the bridge ended on SIGHUP"; tail -n 3 /tmp/bridge.log; exit 1; }
grep -q "SIGHUP ignored" /tmp/bridge.log || { log "no word of the SIGHUP"; tail -n 3 /tmp/bridge.log; exit 1; }
dd if=/dev/nbd0 of=/tmp/direct.back bs=1M skip=100 count=8 iflag=direct 2>/dev/null
cmp /tmp/direct /tmp/direct.back || { log "data read back after the SIGHUP differs"; exit 1; }
log "SIGHUP ignored: the device stayed attached"

mkfs.ext4 -q -F -E nodiscard /dev/nbd0 64M; mkdir -p /mnt/t; mount /dev/nbd0 /mnt/t
dd if=/dev/urandom of=/tmp/seed bs=1M count=2 2>/dev/null
i=0; while [ $i -lt 4 ]; do cp /tmp/seed "/mnt/t/before$i"; i=$((i + 1)); done; sync
log "writing files while the target is killed and restarted"
( j=0; while [ ! -f /tmp/stop ]; do
    if ! dd if=/tmp/seed of="/mnt/t/during$((j % 8))" bs=1M conv=fsync 2>/tmp/dd.err; then
      echo "write $j failed: $(cat /tmp/dd.err)" >/tmp/writer_failed; break
    fi
    j=$((j + 1))
  done
  echo "$j" >/tmp/during_count ) &
wp=$!
sleep 1
t0=$(now)
rc=0; wait_host || rc=$?
log "host side done (exit $rc) after $(elapsed "$t0") s; writing on for 2 s"
sleep 2; touch /tmp/stop; wait $wp
[ "$rc" = 0 ] || exit "$rc"
if [ -f /tmp/writer_failed ]; then log "writer: $(cat /tmp/writer_failed)"; exit 1; fi
log "$(cat /tmp/during_count) file writes (2 MiB, fsync) across the outage"; sync
# The outage outlasted the block layer's 30 s request timeout: the kernel logged and kept waiting.
stuck=$(dmesg | grep -c "Possible stuck request" || true)
[ "$stuck" -gt 0 ] || { log "no request outlived the kernel's 30 s timer"; exit 1; }
log "$stuck requests outlived the block layer's 30 s timer; the kernel waited for them"
for f in /mnt/t/before* /mnt/t/during*; do cmp /tmp/seed "$f"; done
umount /mnt/t; mount /dev/nbd0 /mnt/t
for f in /mnt/t/before* /mnt/t/during*; do cmp /tmp/seed "$f"; done
echo "nbd device: $(ls /mnt/t | wc -l) files verified after remount"
umount /mnt/t
dd if=/dev/nbd0 of=/tmp/direct.back bs=1M skip=100 count=8 iflag=direct 2>/dev/null
cmp /tmp/direct /tmp/direct.back

kill -TERM $bp
brc=0; wait $bp || brc=$?
cat /tmp/bridge.log | grep -v "^$" | tail -n 20
[ "$brc" = 0 ] || { log "bridge exited $brc after SIGTERM"; exit 1; }
grep -q '^detached: /dev/nbd0' /tmp/bridge.log || { log "bridge did not say it detached"; exit 1; }
[ ! -e /sys/block/nbd0/pid ] || { log "/dev/nbd0 still running after the bridge exited"; exit 1; }
dmesg | grep -E "nbd|EXT4" | tail -n 20
if dmesg | grep -E "I/O error|Buffer I/O|EXT4-fs error|Receive control failed|shutting down sockets"; then
  echo "kernel logged I/O errors"; exit 1
fi

# A forced detach: a target in this guest, stopped (SIGSTOP: its connections stay open, nothing is answered)
# with a write outstanding on /dev/nbd1. The first SIGTERM asks the kernel to detach, which waits for that
# write; the second closes the connection: the write fails, and the bridge exits at once, non-zero.
dmesg -c >/dev/null
/opt/holdfast target --listen 127.0.0.1:4420 --nqn "$NQN:local" --ram-mib 16 --block-size 4096 >/tmp/t2.log 2>&1 &
tp=$!
i=0; until grep -q '^connect:' /tmp/t2.log; do i=$((i + 1)); [ $i -lt 300 ] || exit 1; sleep 0.1; done
attach_nbd1() {  # attach_nbd1 LOG ARGS...: a bridge on /dev/nbd1 to the local target; sets b2 (BIN: the binary)
  log_=$1; shift
  "${BIN:-/opt/holdfast}" nbd --addr 127.0.0.1:4420 --nqn "$NQN:local" --device /dev/nbd1 --reconnect-delay-ms 500 \
    "$@" >"$log_" 2>&1 &
  b2=$!
  if [ -n "${BIN:-}" ]; then
    # Gone before the bridge starts the device's process, but only once the bridge runs it: the background
    # job's exec may come after this shell's next command.
    i=0; until [ "$(readlink /proc/$b2/exe 2>/dev/null)" = "$BIN" ]; do
      i=$((i + 1)); [ $i -lt 1000 ] && kill -0 $b2 2>/dev/null || { log "the bridge did not start"; exit 1; }
      sleep 0.01
    done
    rm -f "$BIN"
  fi
  i=0; until grep -q '^attached:' "$log_"; do
    i=$((i + 1)); [ $i -lt 600 ] && kill -0 $b2 2>/dev/null || { log "/dev/nbd1 did not attach"; cat "$log_"; exit 1; }
    sleep 0.1
  done
}
# --read-only: the kernel makes the device read-only (the bridge's READ_ONLY flag); reads work. The bridge
# runs from a copy of the program removed as it starts (an upgrade under it): its device's process is the
# same program all the same.
cp /opt/holdfast /tmp/holdfast-copy
BIN=/tmp/holdfast-copy attach_nbd1 /tmp/b1.log --read-only
[ ! -e /tmp/holdfast-copy ] || exit 1
unset BIN
[ "$(blockdev --getro /dev/nbd1)" = 1 ] || { log "/dev/nbd1 is not read-only"; exit 1; }
if dd if=/tmp/direct of=/dev/nbd1 bs=4k count=1 oflag=direct 2>/dev/null; then log "wrote to a read-only device"; exit 1; fi
dd if=/dev/nbd1 of=/dev/null bs=4k count=4 iflag=direct 2>/dev/null
kill -TERM $b2; brc=0; wait $b2 || brc=$?
[ "$brc" = 0 ] || { log "read-only bridge exited $brc"; tail -n 5 /tmp/b1.log; exit 1; }
log "read-only: the kernel refused a write, reads worked, detached"
attach_nbd1 /tmp/b2.log --ctrl-loss-tmo-ms 60000
dd if=/tmp/direct of=/dev/nbd1 bs=1M count=1 oflag=direct 2>/dev/null
kill -STOP $tp
( if dd if=/tmp/direct of=/dev/nbd1 bs=4k count=1 seek=2000 oflag=direct 2>/dev/null; then echo ok >/tmp/stuck; else echo failed >/tmp/stuck; fi ) &
sp=$!
sleep 1; kill -TERM $b2; sleep 2
kill -0 $b2 2>/dev/null || { log "the bridge did not wait for the outstanding write"; tail -n 5 /tmp/b2.log; exit 1; }
t0=$(now); kill -TERM $b2
brc=0; wait $b2 || brc=$?
t=$(elapsed "$t0"); wait $sp
log "second SIGTERM: the bridge exited $brc after $t s; the stuck write: $(cat /tmp/stuck)"
[ "$brc" != 0 ] && grep -q "detached by force" /tmp/b2.log || { log "no forced detach"; tail -n 5 /tmp/b2.log; exit 1; }
[ "$(cat /tmp/stuck)" = failed ] || { log "the stuck write did not fail"; exit 1; }
awk -v t="$t" 'BEGIN { exit !(t < 15) }' || { log "forcing took $t s"; exit 1; }
[ ! -e /sys/block/nbd1/pid ] || { log "/dev/nbd1 still running after the forced detach"; exit 1; }
kill -CONT $tp

# The bridge killed (SIGKILL): the kernel sees its connection close, the device's process ends and the
# device stops (size 0) and is free again (the next case attaches it).
attach_nbd1 /tmp/b4.log
dp=$(cat /sys/block/nbd1/pid)
kill -9 $b2; wait $b2 2>/dev/null || true
i=0; while [ -e /sys/block/nbd1/pid ] || kill -0 "$dp" 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 100 ] || { log "/dev/nbd1 still running 10 s after its bridge was killed"; exit 1; }
  sleep 0.1
done
[ "$(cat /sys/block/nbd1/size)" = 0 ] || { log "/dev/nbd1 kept its size after its bridge was killed"; exit 1; }
log "bridge killed: the device's process (pid $dp) ended and /dev/nbd1 stopped (size 0)"

# Beyond the policy, fail fast: /dev/nbd1 again (free after the forced detach) with ctrl_loss_tmo 3 s, the
# target killed for good. A write then fails with EIO (the kernel does not wait on, nor give up on, the bridge
# by itself), within the policy's time plus a margin for emulation, and the bridge, its controller lost,
# detaches the device itself and exits 1 saying why.
attach_nbd1 /tmp/b3.log --ctrl-loss-tmo-ms 3000
dd if=/tmp/direct of=/dev/nbd1 bs=1M count=1 oflag=direct 2>/dev/null
dmesg -c >/dev/null  # the forced detach's I/O error is not this one
kill -9 $tp
t0=$(now)
if dd if=/tmp/direct of=/dev/nbd1 bs=4k count=1 seek=1000 oflag=direct 2>/tmp/dd2.err; then
  log "a write succeeded with the target gone"; exit 1
fi
t=$(elapsed "$t0")
log "with the target gone for good, a write failed after $t s: $(head -n 1 /tmp/dd2.err)"
awk -v t="$t" 'BEGIN { exit !(t < 30) }' || { log "failing took $t s (ctrl_loss_tmo 3 s)"; exit 1; }
dmesg | grep -q "I/O error, dev nbd1" || { log "the kernel did not see an I/O error"; exit 1; }
grep -E "lost|gave up|giving up" /tmp/b3.log | head -n 3
i=0; while kill -0 $b2 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 300 ] || { log "bridge 3 still running 30 s after its controller was lost"; exit 1; }
  sleep 0.1
done
brc=0; wait $b2 || brc=$?
[ "$brc" = 1 ] && grep -q 'detached: the controller was lost' /tmp/b3.log \
  || { log "bridge 3 exited $brc"; tail -n 5 /tmp/b3.log; exit 1; }
[ ! -e /sys/block/nbd1/pid ] || { log "/dev/nbd1 still attached after its bridge exited"; exit 1; }
log "controller lost: the bridge detached /dev/nbd1 and exited $brc"
echo NBD-DEVICE-PASSED
