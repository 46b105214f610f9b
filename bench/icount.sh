#!/usr/bin/env bash
# bench/icount.sh: user-space instructions per I/O of one side, counted by callgrind: the same figure run
# after run (two runs of one build agreed within 0.1 % alone, and within 0.6 % with a CI run beside them: the
# batches depend a little on the other side's speed), where IOPS and CPU time on a shared VM move by 5-20 %. It
# counts the side's own code and libraries, not the kernel's work for it (copies, TCP), so it judges changes
# to our code, not the whole cost of an I/O. The side under test runs under valgrind (about 50 times slower),
# the other natively: so the side under test always finds a full batch waiting, and the figure is for
# large batches.
#
#   bench/icount.sh BIN [B_BIN] [holdfast bench flags...]
#   e.g. bench/icount.sh target/release/holdfast --workload randread --qd 32
#        bench/icount.sh /tmp/base/target/release/holdfast target/release/holdfast   # per-function change
#
# Two runs per binary, of N and 4N I/Os; the figures are their difference divided by the 3N extra I/Os, so
# connecting, set-up and exit drop out. Before each, the 4N I/Os' region of the RAM namespace is written once
# (128 KiB writes from a native host; the same work in both runs, so it drops out too), so that reads copy
# real data and writes land in allocated memory, as in bench/run.sh. env: SIDE (host) host or target; N (10000);
# ICOUNT_PREFILL (1) 0 skips that (reads of a namespace never written take another path); ICOUNT_TOP (20)
# functions listed; POLL (0) the --busy-poll-us of both sides (with polling the waiting side spins, and its
# spinning would be counted). Defaults for the point: --workload randread --bs 4096 --qd 32.
# Needs valgrind (Debian package valgrind).
set -euo pipefail
[[ $# -ge 1 ]] || { sed -n '2,21p' "$0" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "icount.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
bins=("$(realpath "$1")"); shift
if [[ $# -ge 1 && -x $1 && $1 != -* ]]; then bins+=("$(realpath "$1")"); shift; fi
side=${SIDE:-host}; n=${N:-10000}; poll=${POLL:-0}
case $side in host|target) ;; *) echo "icount.sh: SIDE is host or target" >&2; exit 2 ;; esac
source "$(dirname "$0")/common.sh"  # hcore, free_port, point_with_defaults
point_with_defaults "$@"
bs=4096
for ((i = 0; i < ${#point[@]}; i++)); do [[ ${point[i]} == --bs ]] && bs=${point[i + 1]}; done
nqn=nqn.2026-01.io.holdfast:icount
work=$(mktemp -d "${TMPDIR:-/tmp}/icount.XXXXXX")
tpid=""
trap '[[ -n $tpid ]] && kill "$tpid" 2>/dev/null; rm -rf "$work"' EXIT

# count BIN TAG K: run K*N I/Os with BIN on the side under test; leaves $work/TAG.K.txt (callgrind_annotate's
# flat profile) and prints the I/Os done.
count() {
  local bin=$1 tag=$2 k=$3 port out tbin hbin ops
  local tw=() hw=()
  out=$work/$tag.$k.cg
  port=$(free_port)
  tbin=$bin; hbin=$bin
  if [[ $side == target ]]; then
    hbin=${bins[0]}; tw=(valgrind -q --tool=callgrind "--callgrind-out-file=$out")
  else
    tbin=${bins[0]}; hw=(valgrind -q --tool=callgrind "--callgrind-out-file=$out")
  fi
  taskset -c 0 ${tw[@]+"${tw[@]}"} "$tbin" target --listen "127.0.0.1:$port" --nqn "$nqn" --ram-mib 1024 \
    --block-size 4096 --busy-poll-us "$poll" >/dev/null 2>&1 &
  tpid=$!
  # A target under valgrind takes a few seconds to listen.
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  if [[ ${ICOUNT_PREFILL:-1} == 1 ]]; then
    taskset -c $hcore "${bins[0]}" bench --addr "127.0.0.1:$port" --nqn "$nqn" --workload write --bs 131072 \
      --qd 16 --size $((4 * n * bs)) --busy-poll-us "$poll" >/dev/null 2>&1 ||
      { echo "icount.sh: writing the region first failed" >&2; exit 1; }
  fi
  ops=$(taskset -c $hcore ${hw[@]+"${hw[@]}"} "$hbin" bench --addr "127.0.0.1:$port" --nqn "$nqn" \
    --size $((k * n * bs)) --busy-poll-us "$poll" --json "${point[@]}" 2>"$work/err" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["ops"])') ||
    { echo "icount.sh: holdfast bench failed:" >&2; tail -n 5 "$work/err" >&2; exit 1; }
  kill -INT "$tpid" 2>/dev/null || true
  wait "$tpid" 2>/dev/null || true
  tpid=""
  callgrind_annotate --auto=no --inclusive=no --threshold=100 "$out" >"$work/$tag.$k.txt" 2>/dev/null
  echo "$ops"
}

args=()
for i in "${!bins[@]}"; do
  o1=$(count "${bins[i]}" "b$i" 1)
  o4=$(count "${bins[i]}" "b$i" 4)
  args+=("${bins[i]}" "$work/b$i" "$o1" "$o4")
done
python3 - "$side" "${ICOUNT_TOP:-20}" "${point[*]}" "${args[@]}" <<'PY'
import re, sys
side, top, point, rest = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]

def load(path):
    total, funcs = 0, {}
    for line in open(path):
        m = re.match(r'\s*([\d,]+) \([ \d.]+%\)\s+(.*)', line)
        if not m:
            continue
        count = int(m.group(1).replace(',', ''))
        if 'PROGRAM TOTALS' in m.group(2):
            total = count
            continue
        name = re.sub(r'^\S*?:', '', m.group(2).split(' [')[0], count=1)
        funcs[name] = funcs.get(name, 0) + count
    return total, funcs

runs = []
for i in range(0, len(rest), 4):
    binary, base, o1, o4 = rest[i], rest[i + 1], int(rest[i + 2]), int(rest[i + 3])
    (t1, f1), (t4, f4) = load(base + '.1.txt'), load(base + '.4.txt')
    extra = o4 - o1
    per = {k: (f4.get(k, 0) - f1.get(k, 0)) / extra for k in set(f1) | set(f4)}
    runs.append((binary, (t4 - t1) / extra, per, extra))
    print("%s, %s side, %s: %.0f user-space instructions per I/O (over %d I/Os)"
          % (binary, side, point, (t4 - t1) / extra, extra))
if len(runs) == 1:
    for v, k in sorted(((v, k) for k, v in runs[0][2].items()), reverse=True)[:top]:
        print("%8.1f  %s" % (v, k[:140]))
else:
    (_, ta, pa, _), (_, tb, pb, _) = runs
    print("B - A: %+.0f instructions per I/O (x%.3f); largest changes by function (A -> B):" % (tb - ta, tb / ta))
    diff = sorted(((pb.get(k, 0) - pa.get(k, 0), k) for k in set(pa) | set(pb)), key=lambda x: -abs(x[0]))
    for d, k in diff[:top]:
        if abs(d) >= 1:
            print("%+8.1f  %7.1f -> %7.1f  %s" % (d, pa.get(k, 0), pb.get(k, 0), k[:120]))
PY
