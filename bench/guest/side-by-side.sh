# shellcheck shell=sh
# bench/guest/side-by-side.sh: runs inside the interop VM (../shared/interop/vm.sh, which sources its lib.sh).
# Serves one 4 KiB-block RAM namespace from the Linux kernel target (nvmet-tcp on memory-backed null_blk) and one
# from holdfast's target (RAM), then drives each with two initiators, the Linux kernel host (nvme-tcp, fio with
# libaio and O_DIRECT) and `holdfast bench`, over the same points. Targets and initiators are pinned as far as
# each allows (holdfast's target to CPU 0; fio and `holdfast bench` to CPU 1; receive processing on loopback
# steered to CPU 0 with RPS, which is where nvmet-tcp then runs its queue work, see bench/side-by-side.sh).
# Prints one line per measurement: SBS|initiator|target|label|iops|MB/s.
# env: SECS (5) per point, MIB (256) namespace size, POINTS ("workload,bs,qd ..."), RPS (1: steer as above; 0: no),
# TARGET_ARGS (extra `holdfast target` flags), HOST_ARGS (extra `holdfast bench` flags), ROLES ("kk kh hk hh": initiator then target, k kernel, h holdfast).
# Under bench/tcg-profile.sh (its marker program is /opt/tbmark) each point is also a profile window.
: "${SECS:=5}" "${MIB:=256}" "${RPS:=1}" "${ROLES:=kk kh hk hh}"
POINTS=${POINTS:-"randread,4096,1 randread,4096,32 randwrite,4096,32 read,131072,16 write,131072,16"}
HF=/opt/holdfast
KNQN=nqn.2026-01.io.holdfast:sbs-kernel
HNQN=nqn.2026-01.io.holdfast:sbs-holdfast
modprobe nvmet; modprobe nvmet-tcp; modprobe nvme-tcp
ip link set lo up
# Profiling (bench/tcg-profile.sh, bench/tcgprof/tbprof.c): user-space addresses the same in every process run
# (so the driver can name them), and a window of the QEMU plugin's counts around each point.
PROF=0 PN=0
if [ -x /opt/tbmark ]; then PROF=1; echo 0 >/proc/sys/kernel/randomize_va_space; fi
prof_start() {
  [ "$PROF" = 1 ] || return 0
  echo "TBPROF-POINT|$PN|$1|$2|$3"; PN=$((PN + 1)); /opt/tbmark 1
}
prof_stop() {
  [ "$PROF" = 1 ] || return 0
  /opt/tbmark 2
}
# Loopback runs the receive path on the sending CPU; without steering, nvmet-tcp (which queues its work on the
# socket's incoming CPU) would share CPU 1 with the initiator. RPS sends all loopback receive work to CPU 0.
[ "$RPS" = 0 ] || echo 1 >/sys/class/net/lo/queues/rx-0/rps_cpus

dev=$(SIZE_MIB=$MIB BLOCK=4096 make_backing nullb)
TRADDR=127.0.0.1 TRSVCID=4420 nvmet_serve "$KNQN" "$dev"
taskset -c 0 "$HF" target --listen 127.0.0.1:4421 --nqn "$HNQN" --ram-mib "$MIB" --block-size 4096 ${TARGET_ARGS:-} >/tmp/target.log 2>&1 &
hpid=$!
sleep 1
kill -0 "$hpid" || { cat /tmp/target.log; exit 1; }
if [ "$PROF" = 1 ]; then
  # The kernel's symbols and the target's mappings, for the driver: it resolves the functions whose entries the
  # plugin logs while the guest waits (vm.sh -H), and the plugin loads them.
  echo TBPROF-KSYMS-BEGIN; grep -i ' t ' /proc/kallsyms | gzip -c | base64; echo TBPROF-KSYMS-END
  sed 's/^/TBPROF-MAPS|/' "/proc/$hpid/maps"
  wait_host
  /opt/tbmark 3
fi
size=$((MIB * 1024 * 1024))
# Both namespaces written once, before any pair runs, so that reads copy real data whatever ROLES holds.
for t in "4420 $KNQN" "4421 $HNQN"; do
  set -- $t
  taskset -c 1 "$HF" bench --addr "127.0.0.1:$1" --nqn "$2" --workload write --bs 131072 --qd 16 --size "$size" \
    --json >/dev/null
done

# What a point cost, for the table of segments and CPU: `snap` before and after it, then `cost BEFORE AFTER
# INITIATOR TARGET LABEL IOPS` prints "SBSC|initiator|target|label|TCP segments per I/O|CPU 0 busy|CPU 1 busy".
# On loopback every segment sent is also received, so OutSegs counts each once, both directions together.
snap() {
  awk '/^Tcp:/ { n++; if (n == 2) print $12 }' /proc/net/snmp
  awk '/^cpu[01] / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat
}
cost() {
  printf '%s\n%s\n' "$1" "$2" | awk -v t="$3|$4|$5" -v iops="$6" -v secs="$SECS" '
    NR == 1 { s0 = $1 } NR == 2 { b0 = -$1; i0 = -$2 } NR == 3 { b1 = -$1; i1 = -$2 }
    NR == 4 { s1 = $1 } NR == 5 { b0 += $1; i0 += $2 } NR == 6 { b1 += $1; i1 += $2 }
    END {
      io = iops * secs
      # (Parenthesised: a bare ">" in a printf argument list is an output redirection.)
      printf "SBSC|%s|%.2f|%.2f|%.2f\n", t, (io > 0 ? (s1 - s0) / io : 0), (b0 + i0 > 0 ? b0 / (b0 + i0) : 0), (b1 + i1 > 0 ? b1 / (b1 + i1) : 0)
    }'
}

# kernel_host PORT NQN TARGETNAME: connect the kernel host, run the points, disconnect.
kernel_host() {
  nvme connect -t tcp -a 127.0.0.1 -s "$1" -n "$2" >/dev/null
  d=$(ns_dev "$2")
  for p in $POINTS; do
    wl=${p%%,*}; r=${p#*,}; bs=${r%%,*}; qd=${r#*,}
    # A failed point is reported (its error count, or -1 if fio printed nothing), not the end of the run.
    rm -f /tmp/fio.out
    prof_start kernel "$3" "$wl $bs $qd"
    before=$(snap)
    taskset -c 1 fio --name=p --filename="$d" --rw="$wl" --bs="$bs" --iodepth="$qd" --ioengine=libaio --direct=1 \
      --size="$size" --runtime="$SECS" --time_based --norandommap --randrepeat=0 \
      --output-format=terse --terse-version=3 >/tmp/fio.out || true
    prof_stop
    after=$(snap)
    # terse v3: 5 error, 7/8 read KiB/s and IOPS, 48/49 write KiB/s and IOPS
    if [ -s /tmp/fio.out ]; then
      iops=$(awk -F';' '{ print $8 + $49 }' /tmp/fio.out)
      awk -F';' -v t="$3" -v l="$wl $bs $qd" -v iops="$iops" '{ printf "SBS|kernel|%s|%s|%d|%.1f|%d\n", t, l, iops, ($7 + $48) * 1024 / 1e6, $5 }' /tmp/fio.out
      cost "$before" "$after" kernel "$3" "$wl $bs $qd" "$iops"
    else
      echo "SBS|kernel|$3|$wl $bs $qd|0|0.0|-1"
    fi
  done
  nvme disconnect -n "$2" >/dev/null
}

# holdfast_host PORT NQN TARGETNAME
holdfast_host() {
  for p in $POINTS; do
    wl=${p%%,*}; r=${p#*,}; bs=${r%%,*}; qd=${r#*,}
    # `holdfast bench` exits 1 when any I/O failed; its report (with the count) still comes.
    rm -f /tmp/hf.out
    prof_start holdfast "$3" "$wl $bs $qd"
    before=$(snap)
    taskset -c 1 "$HF" bench --addr "127.0.0.1:$1" --nqn "$2" --workload "$wl" --bs "$bs" --qd "$qd" --queues 1 \
      --size "$size" --time "$SECS" --json ${HOST_ARGS:-} >/tmp/hf.out || true
    prof_stop
    after=$(snap)
    if grep -q '"iops"' /tmp/hf.out 2>/dev/null; then
      iops=$(sed -e 's/.*"iops":\([0-9.]*\).*/\1/' /tmp/hf.out)
      sed -e 's/.*"errors":\([0-9]*\).*"mbps":\([0-9.]*\).*/\2 \1/' /tmp/hf.out |
        awk -v t="$3" -v l="$wl $bs $qd" -v iops="$iops" '{ printf "SBS|holdfast|%s|%s|%d|%.1f|%d\n", t, l, iops, $1, $2 }'
      cost "$before" "$after" holdfast "$3" "$wl $bs $qd" "$iops"
    else
      echo "SBS|holdfast|$3|$wl $bs $qd|0|0.0|-1"
    fi
  done
}

for r in $ROLES; do
  case $r in
    kk) log "kernel host -> kernel target"; kernel_host 4420 "$KNQN" kernel ;;
    kh) log "kernel host -> holdfast target"; kernel_host 4421 "$HNQN" holdfast ;;
    hk) log "holdfast host -> kernel target"; holdfast_host 4420 "$KNQN" kernel ;;
    hh) log "holdfast host -> holdfast target"; holdfast_host 4421 "$HNQN" holdfast ;;
    *) echo "unknown role pair $r" >&2; exit 2 ;;
  esac
done
kill "$hpid"; wait "$hpid" || true
kernel_errors
log SBS-DONE
