#!/usr/bin/env bash
# bench/tcg-profile.sh: where the time goes in bench/side-by-side.sh's VM, kernel and user, on both vCPUs.
#
# The side-by-side pairs run in a QEMU guest under TCG, whose image has no profiler. QEMU itself executes
# every guest instruction, so a TCG plugin sees them all: bench/tcgprof/tbprof.c counts instructions per translated block, samples which block
# each vCPU is in, and logs the entries of chosen kernel functions (IPIs, wake-ups, context switches, the
# steps of an I/O on each side), in a window the guest opens and closes around each point
# (bench/guest/side-by-side.sh, with the marker program bench/tcgprof/tbmark.c in /opt). The report
# (bench/tcgprof/report.py) gives, per point and pair, instructions and time per I/O on each vCPU by symbol,
# the events per I/O, at QD1 under the kernel host the median timeline of one I/O, and for pairs that share
# an initiator or a target, the largest differences between them.
#
#   bench/tcg-profile.sh [OUTDIR]      prints the report (Markdown); OUTDIR keeps the raw windows
#
# env: TP_ROLES ("kk kh": initiator then target, k kernel, h holdfast), TP_POINTS ("randread,4096,32"),
# TP_SECONDS (5) per point, TP_ROUNDS (1; rounds alternate the order of the pairs), TP_TARGET_ARGS and
# TP_HOST_ARGS (extra flags of `holdfast target` / `holdfast bench`), TP_BIN (a holdfast binary instead of
# this tree's release build), TP_COUNT (1; 0: events only, which leaves the guest's timing as it is: the
# per-block counting slows it by about a fifth), TP_TOP (12) symbols per list. Needs gcc and QEMU 7.2's
# plugin support (Debian 12's qemu-system-x86 has it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/common.sh"  # round_roles
interop=${INTEROP_DIR:-$root/../shared/interop}
out=${1:-$(mktemp -d "${TMPDIR:-/tmp}/holdfast-tcgprof.XXXXXX")}
mkdir -p "$out"
rm -f "$out"/tbprof.* "$out"/events.txt "$out"/ksyms.txt
command -v gcc >/dev/null || { echo "tcg-profile.sh: needs gcc (apt-get install gcc libc6-dev)" >&2; exit 2; }
gcc -O2 -shared -fPIC -pthread -o "$out/tbprof.so" "$root/bench/tcgprof/tbprof.c"
gcc -O2 -static -o "$out/tbmark" "$root/bench/tcgprof/tbmark.c"
if [[ -n ${TP_BIN:-} ]]; then
  cp "$TP_BIN" "$out/holdfast"
else
  (cd "$root" && cargo build --release --quiet)
  cp "$root/target/release/holdfast" "$out/holdfast"
fi
"$interop/setup.sh" >/dev/null
secs=${TP_SECONDS:-5}
rounds=${TP_ROUNDS:-1}
# shellcheck disable=SC2086
round_roles "$rounds" ${TP_ROLES:-kk kh}
envs=(-e "SECS=$secs" -e "RPS=1" -e "ROLES=${roles[*]}" -e "POINTS=${TP_POINTS:-randread,4096,32}")
[[ -n ${TP_TARGET_ARGS:-} ]] && envs+=(-e "TARGET_ARGS=$TP_TARGET_ARGS")
[[ -n ${TP_HOST_ARGS:-} ]] && envs+=(-e "HOST_ARGS=$TP_HOST_ARGS")
npoints=$(wc -w <<<"${TP_POINTS:-a}")
limit=$((900 + ${#roles[@]} * npoints * (secs * 2 + 20)))
rc=0
# The guest prints its kallsyms and waits (wait_host) while report.py resolves the events' addresses from the
# console; then the plugin loads them (tbmark 3).
TBPROF_OUT=$out/tbprof TBPROF_EVENTS=$out/events.txt TBPROF_COUNT=${TP_COUNT:-1} \
  INTEROP_QEMU_ARGS="-plugin $out/tbprof.so" \
  "$interop/vm.sh" -F -q -l "$out/console.log" -c 2 -m 2048 -t "$limit" "${envs[@]}" \
  -f "$out/holdfast" -f "$out/tbmark" -H "python3 '$root/bench/tcgprof/report.py' resolve '$out'" \
  "$root/bench/guest/side-by-side.sh" >/dev/null 2>&1 || rc=$?
if ((rc != 0)) || ! grep -q "SBS-DONE" "$out/console.log"; then
  echo "tcg-profile.sh: the VM run failed (exit $rc); console log: $out/console.log" >&2
  tail -n 30 "$out/console.log" >&2
  exit 1
fi
TP_SECONDS=$secs python3 "$root/bench/tcgprof/report.py" report "$out"
echo "tcg-profile.sh: raw windows in $out" >&2
