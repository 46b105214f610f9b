# shellcheck shell=sh
# guest-target-ana.sh: vm.sh guest script for scripts/interop-kernel-target.sh's kernel-target-ana case. The
# guest is the Linux kernel target (nvmet-tcp, memory-backed null_blk) while holdfast's host, on this machine
# (vm.sh -H), runs a verifying benchmark. Meanwhile the port's ANA group 1 (the namespace's) goes into the
# ANA Change state TIMES times for CHANGE_FOR seconds each (configfs ports/1/ana_groups/1/ana_state), as a
# target failing over inside the subsystem: nvmet then answers every I/O with Asymmetric Access Transition,
# and holdfast's host must wait each transition out (within twice nvmet's ANATT of 10 s) with no I/O error.
# env: NQN, SIZE_MIB, BLOCK as target-role.sh; CHANGE_AT (s before the first, 5), CHANGE_FOR (s, 3),
# CHANGE_EVERY (s between, 4), TIMES (2).
NQN=${NQN:-nqn.2014-08.org.kernel:interop}
G=/sys/kernel/config/nvmet/ports/1/ana_groups/1/ana_state
nvmet_serve "$NQN" "$(make_backing nullb)"
[ "$(cat "$G")" = optimized ] || { log "ANA group 1: $(cat "$G"), not optimized"; exit 1; }
( sleep "${CHANGE_AT:-5}"
  n=1
  while [ "$n" -le "${TIMES:-2}" ]; do
    [ "$n" = 1 ] || sleep "${CHANGE_EVERY:-4}"
    echo change >"$G"
    log "transition $n: ANA group 1 $(cat "$G")"
    sleep "${CHANGE_FOR:-3}"
    echo optimized >"$G"
    log "transition $n: ANA group 1 $(cat "$G")"
    n=$((n + 1))
  done
  echo "$((n - 1))" >/tmp/changes_done ) &
rc=0; wait_host || rc=$?
log "host command finished: exit $rc"
wait
[ "$(cat /tmp/changes_done 2>/dev/null)" = "${TIMES:-2}" ] || { log "the transitions did not all happen"; exit 1; }
exit "$rc"
