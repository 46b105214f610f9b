# shellcheck shell=sh
# guest-nbd-device.sh: vm.sh guest script for scripts/interop-nbd-device.sh. holdfast's NBD bridge, run in the
# guest, attaches holdfast's target (on this machine, reached as 10.0.2.2:$PORT) to the Linux kernel's NBD
# device /dev/nbd0; ext4 on it; files written while the host side (vm.sh -H) kills the target and restarts it;
# every file verified, before and after a remount; O_DIRECT data written and read back; a second bridge on the
# same device refused; SIGTERM detaches the device and the bridge exits 0; the kernel logs no I/O error. Then,
# beyond the policy: a target in the guest killed for good under /dev/nbd1 makes a write fail with EIO.
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
cmp /tmp/direct /tmp/direct.back && log "8 MiB written and read back with O_DIRECT"

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

# Beyond the policy, fail fast: a target in this guest, /dev/nbd1 attached with ctrl_loss_tmo 3 s, the target
# killed for good. A write then fails with EIO (the kernel does not wait on, nor give up on, the bridge by
# itself), within the policy's time plus a margin for emulation, and the bridge still detaches at SIGTERM.
/opt/holdfast target --listen 127.0.0.1:4420 --nqn "$NQN:local" --ram-mib 16 --block-size 4096 >/tmp/t2.log 2>&1 &
tp=$!
i=0; until grep -q '^connect:' /tmp/t2.log; do i=$((i + 1)); [ $i -lt 300 ] || exit 1; sleep 0.1; done
/opt/holdfast nbd --addr 127.0.0.1:4420 --nqn "$NQN:local" --device /dev/nbd1 --ctrl-loss-tmo-ms 3000 \
  --reconnect-delay-ms 500 >/tmp/b2.log 2>&1 &
b2=$!
i=0; until grep -q '^attached:' /tmp/b2.log; do
  i=$((i + 1)); [ $i -lt 600 ] && kill -0 $b2 2>/dev/null || { log "second device did not attach"; cat /tmp/b2.log; exit 1; }
  sleep 0.1
done
dd if=/tmp/direct of=/dev/nbd1 bs=1M count=1 oflag=direct 2>/dev/null
kill -9 $tp
t0=$(now)
if dd if=/tmp/direct of=/dev/nbd1 bs=4k count=1 seek=1000 oflag=direct 2>/tmp/dd2.err; then
  log "a write succeeded with the target gone"; exit 1
fi
t=$(elapsed "$t0")
log "with the target gone for good, a write failed after $t s: $(head -n 1 /tmp/dd2.err)"
awk -v t="$t" 'BEGIN { exit !(t < 30) }' || { log "failing took $t s (ctrl_loss_tmo 3 s)"; exit 1; }
dmesg | grep -q "I/O error, dev nbd1" || { log "the kernel did not see an I/O error"; exit 1; }
grep -E "lost|gave up|giving up" /tmp/b2.log | head -n 3
kill -TERM $b2
brc=0; wait $b2 || brc=$?
[ "$brc" = 0 ] && grep -q '^detached: /dev/nbd1' /tmp/b2.log || { log "bridge 2 exited $brc"; tail -n 5 /tmp/b2.log; exit 1; }
echo NBD-DEVICE-PASSED
