#!/usr/bin/env bash
# bench/ab.sh: compare two holdfast builds on a noisy machine, the way the notes do: alternated runs of one
# point, A then B, each with a fresh target pinned to core 0 and `holdfast bench` pinned to core 1 over
# loopback, and the medians. One run of each tells little on a shared VM (±20 % from run to run); the
# spread of several alternated pairs does. Each run also gives the CPU each side spent per I/O (the target's
# from /proc over the run, the host's as `holdfast bench` reports it): with AB_POLL=0 (both sides sleep when
# idle instead of polling, which spends the whole core whatever the load) that is steadier than IOPS on such a
# machine, and it measures a side's own cost while the other side is the bottleneck. (The target's figure also
# holds its share of the run's connect and shutdown, a few milliseconds; the host's covers the I/O only. A build
# from before bench reported its CPU shows "nan" for the host.)
#
#   bench/ab.sh A_BIN B_BIN [holdfast bench flags...]
#   e.g. git worktree add /tmp/base HEAD~3 && (cd /tmp/base && cargo build --release)
#        bench/ab.sh /tmp/base/target/release/holdfast target/release/holdfast --workload randread --qd 32
#
# env: AB_PAIRS (5) pairs; AB_SECONDS (4) per run; AB_SIDE (both) which side runs the build under test:
# "both", "target" (the host is always A) or "host" (the target is always A); AB_PREFILL (0) 1 writes the
# whole 1 GiB RAM namespace before the run (reads then copy real data, and writes do not pay for the kernel
# zeroing fresh pages, which otherwise dominates short write runs; costs a few seconds per run); AB_POLL (1)
# 0 runs both sides with --busy-poll-us 0; AB_FILE (unset) a path: the namespace is a 1 GiB file there
# (`--file`, created afresh for each run) instead of RAM.
# Defaults for the point: --workload randread --bs 4096 --qd 32, for those of these flags not given.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,21p' "$0" >&2; exit 2; }
a=$(realpath "$1"); b=$(realpath "$2"); shift 2
[[ -x $a && -x $b ]] || { echo "ab.sh: $a or $b is not an executable" >&2; exit 2; }
pairs=${AB_PAIRS:-5}; secs=${AB_SECONDS:-4}; side=${AB_SIDE:-both}
poll=(); [[ ${AB_POLL:-1} == 0 ]] && poll=(--busy-poll-us 0)
case $side in both|target|host) ;; *) echo "ab.sh: AB_SIDE is both, target or host" >&2; exit 2 ;; esac
source "$(dirname "$0")/common.sh"  # hcore, free_port, point_with_defaults
nqn=nqn.2026-01.io.holdfast:ab
tpid=""

# User + system CPU of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat, counted after the
# command name, which may hold spaces).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

run_one() {  # run_one BIN: prints "IOPS target-µs/IO host-µs/IO" of one run
  local bin=$1 tbin=$1 hbin=$1 port
  [[ $side == host ]] && tbin=$a
  [[ $side == target ]] && hbin=$a
  port=$(free_port)
  local backend=(--ram-mib 1024)
  [[ -n ${AB_FILE:-} ]] && { rm -f "$AB_FILE"; backend=(--file "$AB_FILE" --size-mib 1024); }
  taskset -c 0 "$tbin" target --listen "127.0.0.1:$port" --nqn "$nqn" "${backend[@]}" --block-size 4096 \
    ${poll[@]+"${poll[@]}"} >/dev/null 2>&1 &
  tpid=$!
  sleep 0.5
  if [[ ${AB_PREFILL:-0} == 1 ]]; then
    taskset -c $hcore "$hbin" bench --addr "127.0.0.1:$port" --nqn "$nqn" --workload write --bs 131072 --qd 16 \
      --size 1073741824 --json >/dev/null 2>&1
  fi
  local out c0 c1
  c0=$(cpu_ticks "$tpid")
  out=$(taskset -c $hcore "$hbin" bench --addr "127.0.0.1:$port" --nqn "$nqn" --size 1073741824 --json \
    --time "$secs" ${poll[@]+"${poll[@]}"} "${point[@]}" 2>"$err") || true
  c1=$(cpu_ticks "$tpid")
  kill "$tpid" 2>/dev/null || true
  wait "$tpid" 2>/dev/null || true
  tpid=""
  python3 -c '
import json, sys
d = json.loads(sys.argv[1])
if d["errors"] or d.get("verify_mismatches"):
    print("errors 0 0")
else:
    tgt = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4]) * 1e6 / max(d["ops"], 1)
    c = d.get("cpu_us_per_io")
    print(int(d["iops"]), "%.2f" % tgt, "%.2f" % (c["user"] + c["sys"]) if c else "nan")
' "$out" "$c0" "$c1" "$(getconf CLK_TCK)" 2>/dev/null || { echo "ab.sh: holdfast bench failed:" >&2; tail -n 5 "$err" >&2; exit 1; }
}

# The point: the flags given, with defaults for the ones not given.
point_with_defaults "$@"
err=$(mktemp "${TMPDIR:-/tmp}/ab.XXXXXX")
trap '[[ -n $tpid ]] && kill "$tpid" 2>/dev/null; rm -f "$err"' EXIT

ra=(); rb=()
for ((i = 1; i <= pairs; i++)); do
  ra+=("$(run_one "$a")")
  rb+=("$(run_one "$b")")
  echo "pair $i: A ${ra[-1]}  B ${rb[-1]}  (IOPS, target and host CPU µs per I/O)" >&2
done
python3 - "$a" "$b" "$side" "$(IFS=,; echo "${ra[*]}")" "$(IFS=,; echo "${rb[*]}")" <<'PY'
import statistics, sys
a, b, side = sys.argv[1:4]
runs = [[r.split() for r in x.split(",")] for x in sys.argv[4:6]]
if any(r[0] == "errors" for x in runs for r in x):
    sys.exit("ab.sh: a run reported errors: A %s, B %s" % tuple(sys.argv[4:6]))
med = []
for name, path, rs in (("A", a, runs[0]), ("B", b, runs[1])):
    iops = sorted(int(r[0]) for r in rs)
    tgt, host = (statistics.median(float(r[k]) for r in rs) for k in (1, 2))
    med.append((statistics.median(iops), tgt, host))
    print("%s %s: %s  median %d IOPS; CPU per I/O, medians: target %.2f µs, host %.2f µs"
          % (name, path, " ".join(map(str, iops)), med[-1][0], tgt, host))
(ia, ta, ha), (ib, tb, hb) = med
r = lambda b, a: "%.3f" % (b / a) if a > 0 and b == b and a == a else "n/a"
print("B / A (medians, build under test on %s side%s): IOPS %s; CPU per I/O: target %s, host %s"
      % (side, "" if side != "both" else "s", r(ib, ia), r(tb, ta), r(hb, ha)))
PY
