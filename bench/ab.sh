#!/usr/bin/env bash
# bench/ab.sh: compare two holdfast builds on a noisy machine, the way the notes do: alternated runs of one
# point, A then B, each with a fresh target pinned to core 0 and `holdfast bench` pinned to core 1 over
# loopback, and the medians. One run of each tells little on a shared VM (±20 % from run to run); the
# spread of several alternated pairs does.
#
#   bench/ab.sh A_BIN B_BIN [holdfast bench flags...]
#   e.g. git worktree add /tmp/base HEAD~3 && (cd /tmp/base && cargo build --release)
#        bench/ab.sh /tmp/base/target/release/holdfast target/release/holdfast --workload randread --qd 32
#
# env: AB_PAIRS (5) pairs; AB_SECONDS (4) per run; AB_SIDE (both) which side runs the build under test:
# "both", "target" (the host is always A) or "host" (the target is always A); AB_PREFILL (0) 1 writes the
# whole 1 GiB RAM namespace before the run (reads then copy real data, and writes do not pay for the kernel
# zeroing fresh pages, which otherwise dominates short write runs; costs a few seconds per run).
# Defaults for the point: --workload randread --bs 4096 --qd 32, for those of these flags not given.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,15p' "$0" >&2; exit 2; }
a=$(realpath "$1"); b=$(realpath "$2"); shift 2
[[ -x $a && -x $b ]] || { echo "ab.sh: $a or $b is not an executable" >&2; exit 2; }
pairs=${AB_PAIRS:-5}; secs=${AB_SECONDS:-4}; side=${AB_SIDE:-both}
case $side in both|target|host) ;; *) echo "ab.sh: AB_SIDE is both, target or host" >&2; exit 2 ;; esac
cores=$(nproc); hcore=$((cores > 1 ? 1 : 0))
nqn=nqn.2026-01.io.holdfast:ab
tpid=""
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run_one() {  # run_one BIN: prints the IOPS of one run
  local bin=$1 tbin=$1 hbin=$1 port
  [[ $side == host ]] && tbin=$a
  [[ $side == target ]] && hbin=$a
  port=$(free_port)
  taskset -c 0 "$tbin" target --listen "127.0.0.1:$port" --nqn "$nqn" --ram-mib 1024 --block-size 4096 \
    >/dev/null 2>&1 &
  tpid=$!
  sleep 0.5
  if [[ ${AB_PREFILL:-0} == 1 ]]; then
    taskset -c $hcore "$hbin" bench --addr "127.0.0.1:$port" --nqn "$nqn" --workload write --bs 131072 --qd 16 \
      --size 1073741824 --json >/dev/null 2>&1
  fi
  local out
  out=$(taskset -c $hcore "$hbin" bench --addr "127.0.0.1:$port" --nqn "$nqn" --size 1073741824 --json \
    --time "$secs" "${point[@]}" 2>"$err") || true
  kill "$tpid" 2>/dev/null || true
  wait "$tpid" 2>/dev/null || true
  tpid=""
  python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print(int(d["iops"]) if d["errors"] == 0 else "errors")' \
    "$out" 2>/dev/null || { echo "ab.sh: holdfast bench failed:" >&2; tail -n 5 "$err" >&2; exit 1; }
}

# The point: the flags given, with defaults for the ones not given (clap refuses a flag given twice).
point=("$@")
for d in "--workload randread" "--bs 4096" "--qd 32"; do
  [[ " $* " == *" ${d%% *} "* || " $* " == *" ${d%% *}="* ]] || point+=($d)
done
err=$(mktemp "${TMPDIR:-/tmp}/ab.XXXXXX")
trap '[[ -n $tpid ]] && kill "$tpid" 2>/dev/null; rm -f "$err"' EXIT

ra=(); rb=()
for ((i = 1; i <= pairs; i++)); do
  ra+=("$(run_one "$a")")
  rb+=("$(run_one "$b")")
  echo "pair $i: A ${ra[-1]}  B ${rb[-1]}" >&2
done
python3 - "$a" "$b" "$side" "${ra[*]}" "${rb[*]}" <<'PY'
import statistics, sys
a, b, side = sys.argv[1:4]
ra, rb = sys.argv[4].split(), sys.argv[5].split()
if "errors" in ra + rb:
    sys.exit("ab.sh: a run reported errors: A %s, B %s" % (ra, rb))
ra, rb = sorted(map(int, ra)), sorted(map(int, rb))
ma, mb = statistics.median(ra), statistics.median(rb)
print("A %s: %s  median %d IOPS" % (a, " ".join(map(str, ra)), ma))
print("B %s: %s  median %d IOPS" % (b, " ".join(map(str, rb)), mb))
print("B / A (medians, build under test on %s side%s): %.3f" % (side, "" if side != "both" else "s", mb / ma))
PY
