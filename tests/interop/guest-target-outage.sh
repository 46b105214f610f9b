# shellcheck shell=sh
# guest-target-outage.sh: vm.sh guest script for scripts/interop-kernel-target.sh's ride-through case. The guest
# is the Linux kernel target (nvmet-tcp, memory-backed null_blk) while holdfast's host, on this machine (vm.sh
# -H), runs a verifying benchmark. Meanwhile the target goes away and comes back OUTAGES times, two ways in
# turn:
#   odd outages: the port is removed (nvmet ends every controller through it, closing their connections; new
#     connections are reset), as a target whose process or machine restarts;
#   even outages: only our subsystem leaves the port (a second subsystem keeps it listening), so reconnects
#     reach nvmet and their Connect is refused (subsystem not found, Connect Invalid Parameters), as a target
#     that is up but has not configured the subsystem again yet.
# Both come back after OUT_FOR seconds. The data stays (same null_blk), so every write the host had acknowledged
# must read back after each outage.
# env: NQN, SIZE_MIB, BLOCK as target-role.sh; OUT_AT (s before the first outage, 6), OUT_FOR (s down, 3),
# OUT_EVERY (s from one outage's end to the next one's start, 6), OUTAGES (2).
NQN=${NQN:-nqn.2014-08.org.kernel:interop}
S=/sys/kernel/config/nvmet
P=$S/ports/1
nvmet_serve "$NQN" "$(make_backing nullb)"
nvmet_serve "$NQN.other" "$(make_backing nullb)"
port_make() {
  mkdir "$P"
  echo tcp >"$P/addr_trtype"; echo ipv4 >"$P/addr_adrfam"; echo 0.0.0.0 >"$P/addr_traddr"; echo 4420 >"$P/addr_trsvcid"
}
( sleep "${OUT_AT:-6}"
  n=1
  while [ "$n" -le "${OUTAGES:-2}" ]; do
    [ "$n" = 1 ] || sleep "${OUT_EVERY:-6}"
    rm "$P/subsystems/$NQN"
    if [ $((n % 2)) = 1 ]; then
      rm "$P/subsystems/$NQN.other"; rmdir "$P"
      log "outage $n: nvmet port removed"
      sleep "${OUT_FOR:-3}"
      port_make; ln -s "$S/subsystems/$NQN.other" "$P/subsystems/$NQN.other"
    else
      log "outage $n: $NQN taken off the port"
      sleep "${OUT_FOR:-3}"
    fi
    ln -s "$S/subsystems/$NQN" "$P/subsystems/$NQN"
    log "outage $n: back"
    n=$((n + 1))
  done
  echo "$((n - 1))" >/tmp/outages_done ) &
rc=0; wait_host || rc=$?
log "host command finished: exit $rc"
wait
[ "$(cat /tmp/outages_done 2>/dev/null)" = "${OUTAGES:-2}" ] || { log "the outages did not all happen"; exit 1; }
exit "$rc"
