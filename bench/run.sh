#!/usr/bin/env bash
# bench/run.sh: the benchmark suite. The target is pinned to core 0 and `holdfast bench` to core 1 (RAM
# namespace of 1 GiB with 4 KiB blocks, written once before any read so that reads copy real data; loopback);
# iperf3 over loopback with the same pinning is measured in the same run as the throughput reference, and
# the round trip of two spinning processes (crates/holdfast-rt/examples/loopback_rtt.rs) as the latency
# reference, both at the start and again after the main table (a table whose references moved during the run
# says so). Writes BENCHMARKS.md: each figure with its throughput as a ratio of the iperf3 reference (and
# mean latency as a multiple of the round-trip floor), the change against the
# previously committed table, each side's system calls and context switches per I/O (perf stat), a scale
# table (RSS and IOPS with 1/16/64/256 controllers × 4 queues) and IOPS against the number of queues. Figures
# are noisy on shared machines: compare ratios taken in one run.
# Then bench/side-by-side.sh measures holdfast's target and host against the Linux kernel's (in the interop VM,
# under emulation) and its section is added to BENCHMARKS.md.
#   BENCH_SECONDS (5) per point; BENCH_QUICK=1 runs a reduced matrix without the scale tables (BENCH_COUNT=1
#   keeps the table of system calls and context switches per I/O, which needs perf, in a quick run);
#   SIDE_BY_SIDE=0 skips the side-by-side run. Also each side's user-space instructions per I/O at three points
#   (bench/icount.sh, callgrind: steady from run to run, so its change against the previous table is our code's;
#   BENCH_ICOUNT=1 keeps it in a quick run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
secs=${BENCH_SECONDS:-5}
command -v iperf3 >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null; }
command -v valgrind >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null || true; }
cargo build --release --quiet
cargo build --release --quiet -p holdfast-rt --example loopback_rtt
bin=$root/target/release/holdfast
work=$(mktemp -d "${TMPDIR:-/tmp}/holdfast-bench.XXXXXX")
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
source bench/common.sh  # hcore, free_port
tcore=0

# The references: iperf3, one stream, 128 KiB writes; and spinning request/answer round trips with the wire shape
# of a 4 KiB read, no NVMe work. Measured at the start of the run and again after the main table: a shared
# machine can change speed in the middle of a run, and a table whose references moved is not one to trust.
rtt=$root/target/release/examples/loopback_rtt
measure_refs() {  # sets $ref_gbps and $ref_floor
  local ip rp
  ip=$(free_port)
  taskset -c $tcore iperf3 -s -p "$ip" -1 >/dev/null 2>&1 & pids+=("$!")
  sleep 0.5
  ref_gbps=$(taskset -c $hcore iperf3 -c 127.0.0.1 -p "$ip" -t "$secs" -l 128K -J | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9, 2))')
  rp=$(free_port)
  taskset -c $tcore "$rtt" serve "$rp" & pids+=("$!")
  ref_floor=$(taskset -c $hcore "$rtt" client "$rp" 4144 "$secs")
}
measure_refs; iperf_gbps=$ref_gbps; floor_us=$ref_floor
echo "iperf3 loopback, 1 stream, 128 KiB: $iperf_gbps Gbit/s"
echo "loopback round trip floor (72 B request, 4144 B answer, both sides spinning): $floor_us us"

nqn=nqn.2026-01.io.holdfast:bench
backend=(--ram-mib 1024)
start_target() {  # start_target [extra target flags]: sets $port and $tpid
  port=$(free_port)
  taskset -c $tcore "$bin" target --listen "127.0.0.1:$port" --nqn "$nqn" "${backend[@]}" --block-size 4096 "$@" \
    >"$work/target.log" 2>&1 &
  tpid=$!; pids+=("$tpid"); sleep 0.5
  # Write the whole namespace once: reads then copy real data, as from a filled device.
  [[ ${PREFILL:-1} == 1 ]] || return 0
  taskset -c $hcore "$bin" bench --addr "127.0.0.1:$port" --nqn "$nqn" --workload write --bs 131072 --qd 16 \
    --size 1073741824 --json >/dev/null 2>&1
}
stop_target() { kill "$tpid" 2>/dev/null; wait "$tpid" 2>/dev/null || true; }
bench_argv() {  # sets $argv: `holdfast bench` on the host core against the running target, $secs long, JSON out
  # (over the whole 1 GiB namespace, or its first $region bytes)
  argv=(taskset -c $hcore "$bin" bench --addr "127.0.0.1:$port" --nqn "$nqn" --time "$secs" --size "${region:-1073741824}"
    --json)
}
bench() {  # bench ARGS...: prints the JSON report. A run that fails (errors, verify mismatches, a lost
  # controller) says so on stderr with the end of its own; its report, if it printed one, still goes out, and its
  # row counts the errors (set -e would otherwise end the whole suite here without a word).
  bench_argv
  local rc=0
  "${argv[@]}" "$@" 2>"$work/bench.err" || rc=$?
  if ((rc != 0)); then
    echo "run.sh: bench $* exited $rc:" >&2
    tail -n 5 "$work/bench.err" >&2
  fi
}

rows=()
point() {  # point LABEL WORKLOAD BS QD QUEUES [bench flags]; env region: bytes of the namespace used (all of it)
  local label=$1 wl=$2 bs=$3 qd=$4 q=$5; shift 5
  local j; j=$(bench --workload "$wl" --bs "$bs" --qd "$qd" --queues "$q" "$@")
  local line; line=$(python3 -c '
import json, sys
d = json.loads(sys.argv[1]); ref = float(sys.argv[2]); floor = float(sys.argv[4])
gbps = d["mbps"] * 8 / 1000
mean = d["qd"] * d["queues"] / d["iops"] * 1e6 if d["iops"] else 0
xfloor = "%.2f" % (mean / floor) if d["qd"] * d["queues"] == 1 and floor > 0 else ""
print("| %s | %d | %.1f | %.1f | %d | %d | %d | %.3f | %s |" % (sys.argv[3], d["iops"], d["mbps"], mean, d["lat_us"]["p50"], d["lat_us"]["p99"], d["errors"] + d["verify_mismatches"], gbps / ref, xfloor))
' "$j" "$iperf_gbps" "$label" "$floor_us")
  echo "$line"; rows+=("$line")
}

start_target
point "4 KiB randread QD1" randread 4096 1 1
point "4 KiB randread QD32" randread 4096 32 1
point "4 KiB randwrite QD32" randwrite 4096 32 1
point "128 KiB read QD16" read 131072 16 1
point "128 KiB write QD16" write 131072 16 1
if [[ ${BENCH_QUICK:-0} != 1 ]]; then
  point "4 KiB randwrite QD1" randwrite 4096 1 1
  point "4 KiB randread QD128" randread 4096 128 1
  point "4 KiB randwrite QD128" randwrite 4096 128 1
  # One queue at the per-queue depth of the two-queue rows: a queue's batches (and so its cost per I/O) follow
  # its own depth, not the total.
  point "4 KiB randread QD16" randread 4096 16 1
  point "4 KiB randwrite QD16" randwrite 4096 16 1
  point "4 KiB randread QD32, 2 queues" randread 4096 16 2
  point "4 KiB randwrite QD32, 2 queues" randwrite 4096 16 2
  point "128 KiB read QD16, 2 queues" read 131072 8 2
  point "4 KiB randread QD32, digests" randread 4096 32 1 --digests
  point "4 KiB randwrite QD32, digests" randwrite 4096 32 1 --digests
  point "128 KiB read QD16, digests" read 131072 16 1 --digests
  point "128 KiB write QD16, digests" write 131072 16 1 --digests
  point "4 KiB randrw QD16 2 queues --verify" randrw 4096 16 2 --verify
  # The same I/O confined to 8 MiB of the namespace, which the caches hold: the stack's own cost, without
  # waiting on memory for data that random 4 KiB I/O over 1 GiB finds in none of the caches.
  region=8388608 point "4 KiB randread QD32, 8 MiB region" randread 4096 32 1
  region=8388608 point "4 KiB randwrite QD32, 8 MiB region" randwrite 4096 32 1
fi
# Work per I/O, counted rather than timed: each side's system calls and context switches per I/O (perf stat,
# over the middle of a run), which show how many I/Os each system call serves.
counts=()
count_secs=$((secs > 3 ? secs - 2 : 1))  # the counting window: from 1 s into a run to 1 s before its end
counted() {  # counted LABEL WORKLOAD BS QD
  local label=$1 wl=$2 bs=$3 qd=$4 hpid tstat win=$count_secs
  bench_argv
  "${argv[@]}" --workload "$wl" --bs "$bs" --qd "$qd" >"$work/counted.json" 2>/dev/null &
  hpid=$!; pids+=("$hpid")
  sleep 1
  perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$tpid" -o "$work/counted.t" -- sleep "$win" &
  tstat=$!
  perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$hpid" -o "$work/counted.h" -- sleep "$win" || true
  wait "$tstat" "$hpid" || true
  local line; line=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1])); ios = d["iops"] * float(sys.argv[2])
def per_io(path):
    c = {}
    for l in open(path):
        f = l.strip().split(",")
        if len(f) > 2 and f[0].isdigit():
            c[f[2]] = int(f[0])
    return "%.2f | %.3f" % (c["raw_syscalls:sys_enter"] / ios, c["context-switches"] / ios)
print("| %s | %d | %s | %s |" % (sys.argv[3], d["iops"], per_io(sys.argv[4]), per_io(sys.argv[5])))
' "$work/counted.json" "$win" "$label" "$work/counted.t" "$work/counted.h") || line="| $label | (not counted) | | | | |"
  echo "$line"; counts+=("$line")
}
if [[ ${BENCH_QUICK:-0} != 1 || ${BENCH_COUNT:-0} == 1 ]] && command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
  counted "4 KiB randread QD1" randread 4096 1
  counted "4 KiB randread QD32" randread 4096 32
  counted "4 KiB randread QD128" randread 4096 128
  counted "4 KiB randwrite QD32" randwrite 4096 32
  counted "128 KiB read QD16" read 131072 16
elif [[ ${BENCH_QUICK:-0} != 1 ]]; then
  echo "perf stat cannot count system calls here (no perf, or no access to tracepoints): no table of work per I/O" >&2
fi
stop_target
measure_refs; iperf_end=$ref_gbps; floor_end=$ref_floor
echo "references again: iperf3 $iperf_end Gbit/s, round trip floor $floor_end us"
# Work per I/O in instructions: each side's user-space instructions per I/O under callgrind (bench/icount.sh,
# which starts its own target and host). A run of it gives the same figure within 0.1-0.6 %, however noisy the
# machine, where IOPS move by 5-20 %: its change against the previous table is the change in our code.
icounts=()
icounted() {  # icounted LABEL [bench flags]
  local label=$1 h t line; shift
  h=$(SIDE=host bench/icount.sh "$bin" "$@" 2>/dev/null | sed -n '1s/.*: \([0-9]*\) user-space instructions.*/\1/p') || h=""
  t=$(SIDE=target bench/icount.sh "$bin" "$@" 2>/dev/null | sed -n '1s/.*: \([0-9]*\) user-space instructions.*/\1/p') || t=""
  line="| $label | ${h:-(not counted)} | ${t:-(not counted)} |"
  echo "$line"; icounts+=("$line")
}
if [[ ${BENCH_QUICK:-0} != 1 || ${BENCH_ICOUNT:-0} == 1 ]] && command -v valgrind >/dev/null; then
  icounted "4 KiB randread QD1" --workload randread --bs 4096 --qd 1
  icounted "4 KiB randread QD32" --workload randread --bs 4096 --qd 32
  icounted "4 KiB randwrite QD32" --workload randwrite --bs 4096 --qd 32
elif [[ ${BENCH_QUICK:-0} != 1 ]]; then
  echo "valgrind is not installed: no table of instructions per I/O" >&2
fi
if [[ ${BENCH_QUICK:-0} != 1 ]]; then
  # The same without busy polling on either side.
  start_target --busy-poll-us 0
  point "4 KiB randread QD1, no busy polling" randread 4096 1 1 --busy-poll-us 0
  point "4 KiB randread QD32, no busy polling" randread 4096 32 1 --busy-poll-us 0
  stop_target
  # File backend (page cache of the machine's disk; each I/O runs on the blocking pool).
  backend=(--file "$work/ns.img" --size-mib 1024)
  start_target
  point "file: 4 KiB randread QD32" randread 4096 32 1
  point "file: 4 KiB randwrite QD32" randwrite 4096 32 1
  point "file: 128 KiB write QD16" write 131072 16 1
  stop_target
  rm -f "$work/ns.img"
  backend=(--ram-mib 1024)
fi

scale=(); queues=()
if [[ ${BENCH_QUICK:-0} != 1 ]]; then
  for n in 1 16 64 256; do
    # Not prefilled: the RAM namespace stays unallocated, so the RSS is what the connections cost.
    PREFILL=0 start_target
    j=$(/usr/bin/time -f '%M' -o "$work/host_rss" taskset -c $hcore "$bin" bench --addr "127.0.0.1:$port" --nqn "$nqn" \
      --workload randread --bs 4096 --qd 4 --queues 4 --controllers "$n" --time "$secs" --json 2>"$work/bench.err") ||
      { echo "run.sh: bench --controllers $n failed:" >&2; tail -n 5 "$work/bench.err" >&2; }
    trss=$(awk '/VmHWM/ {print $2}' "/proc/$tpid/status")
    line=$(python3 -c '
import json, sys
d = json.loads(sys.argv[1]); n = int(sys.argv[2])
print("| %d | %d | %d | %d | %d | %d | %.0f | %.0f |" % (n, n * 5, d["iops"], d["lat_us"]["p50"], d["lat_us"]["p99"], d["errors"], int(sys.argv[3]) / 1024, int(sys.argv[4]) / 1024))
' "$j" "$n" "$trss" "$(cat "$work/host_rss")")
    echo "$line"; scale+=("$line")
    stop_target
  done
  start_target
  for q in 1 2 4 8; do
    j=$(bench --workload randread --bs 4096 --qd 32 --queues "$q")
    line=$(python3 -c '
import json, sys
d = json.loads(sys.argv[1])
print("| %d | %d | %d | %d | %d |" % (d["queues"], d["qd"] * d["queues"], d["iops"], d["lat_us"]["p50"], d["lat_us"]["p99"]))
' "$j")
    echo "$line"; queues+=("$line")
  done
  stop_target
fi

# Side by side with the Linux kernel's target and host (a VM under emulation; both cores).
sbs=""
if [[ ${SIDE_BY_SIDE:-1} != 0 ]]; then
  echo "side by side with the Linux kernel target and host (interop VM)..."
  if ! sbs=$(SBS_SECONDS=$secs SBS_LOG="$work/side-by-side.log" bench/side-by-side.sh); then
    sbs="## Side by side with the Linux kernel target and host"$'\n\n'"The run failed (bench/side-by-side.sh); nothing measured."
  fi
  printf '%s\n' "$sbs"
fi

# The table to compare with: the committed one (a run whose table was not committed is no baseline), else the
# file as it is (outside a git checkout).
prev=$(git show HEAD:BENCHMARKS.md 2>/dev/null) || { prev=""; [[ -f BENCHMARKS.md ]] && prev=$(cat BENCHMARKS.md); }
{
  echo "# Benchmarks"
  echo
  echo "Produced by \`bench/run.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -r)): target pinned to core $tcore,"
  echo "\`holdfast bench\` pinned to core $hcore, RAM namespace of 1 GiB with 4 KiB blocks (written once before the"
  echo "reads), loopback, $secs s per point, busy polling on (the defaults: \`--busy-poll-us 50\` for the target, 200 for \`bench\`) unless a row says otherwise."
  echo "Reference in the same run: iperf3, one stream, 128 KiB writes, same pinning: **$iperf_gbps Gbit/s**."
  echo "Latency reference in the same run: a 72-byte request answered with 4144 bytes (the wire shape of a 4 KiB"
  echo "read) between two processes spinning on nonblocking loopback sockets, no NVMe work: **$floor_us µs** per round trip."
  echo "Both measured at the start of the run, and again after the busy-polling rows: $iperf_end Gbit/s, $floor_end µs."
  python3 - "$iperf_gbps" "$iperf_end" "$floor_us" "$floor_end" <<'PY'
import sys
g0, g1, f0, f1 = map(float, sys.argv[1:])
drift = max(abs(g1 / g0 - 1), abs(f1 / f0 - 1))
if drift > 0.15:
    print("**The references moved by %.0f %% during the run: the machine changed speed, and rows measured at" % (drift * 100))
    print("different times do not compare. Take this table as a sketch, not as a measurement.**")
PY
  echo "*mean µs* = outstanding I/Os / IOPS (Little's law); *errors* = failed I/Os and verify mismatches; *ratio* = the point's"
  echo "throughput / the iperf3 reference;"
  echo "*× floor* = mean µs / the round-trip floor (QD1 rows). *QD n, 2 queues* is n outstanding in all, n/2 on each"
  echo "queue. A queue's I/Os travel in about two groups, so each TCP segment's cost is shared by about half that"
  echo "queue's depth: such a row pays per I/O what the one-queue QD n/2 row does, and trails the one-queue QD n row."
  echo "*8 MiB region* rows keep to the first 8 MiB of the namespace, which the caches hold; the other rows spread"
  echo "over all of it, and random 4 KiB reads then wait on memory for their data (perf, 4 KiB randread QD32: the"
  echo "target's copy of the data out of the namespace and its prefetching of it took 50 % of its CPU over 1 GiB,"
  echo "32 % over 8 MiB). Set a reference's figures beside the rows whose working set matches its own."
  echo "Numbers on shared machines are noisy: compare ratios taken in one run."
  echo
  echo "| point | IOPS | MB/s | mean µs | p50 µs | p99 µs | errors | ratio to iperf3 | × floor |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "## Against the reference figures of issue 5"
  echo
  echo "A polled userspace stack (SPDK) measured on a machine like ours, set against this run by each run's ratio"
  echo "to its own iperf3 reference (theirs: 34.7 Gbit/s); QD1 latency directly, since their round-trip floor is not"
  echo "known (\`bench/reference.py\`)."
  echo
  printf '%s\n' "${rows[@]}" | python3 bench/reference.py "$iperf_gbps"
  if [[ ${#counts[@]} -gt 0 ]]; then
    echo
    echo "## Work per I/O: system calls and context switches"
    echo
    echo "Counted with \`perf stat\` over the middle $count_secs s of a run of each point (busy polling on, as in the"
    echo "table above), divided by the I/Os of that time: how many I/Os each system call serves, which IOPS alone"
    echo "do not show. With busy polling a side that waits calls \`recv\` and \`sched_yield\` in a loop, so the"
    echo "counts hold that waiting too: a side with time to spare (the host at high queue depths, both at QD1)"
    echo "counts more than its work."
    echo
    echo "| point | IOPS | target syscalls | target switches | host syscalls | host switches |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${counts[@]}"
  fi
  if [[ ${#icounts[@]} -gt 0 ]]; then
    echo
    echo "## Work per I/O: user-space instructions"
    echo
    echo "Counted by callgrind (\`bench/icount.sh\`): each side's own code and libraries per I/O, the difference"
    echo "between runs of 10 000 and 40 000 I/Os, busy polling off. The kernel's work (copies, TCP) is not in it, and"
    echo "the side under valgrind always finds a full batch waiting. Unlike IOPS it is the same from run to run"
    echo "(within 0.1-0.6 %), so its change against the previous table is the change in our code."
    echo
    python3 - "$prev" "${icounts[@]}" <<'PY'
import sys
before, title = {}, "## Work per I/O: user-space instructions"
for l in (sys.argv[1].split(title)[1].splitlines()[:20] if title in sys.argv[1] else []):
    c = [x.strip() for x in l.strip("|").split("|")]
    if len(c) >= 3 and c[1].isdigit() and c[2].isdigit():
        before[c[0]] = (int(c[1]), int(c[2]))
def change(now, then):
    return "%d -> %s (x%.3f)" % (then, now, int(now) / then) if now.isdigit() else "%d -> %s" % (then, now)
print("| point | host | target |" + (" host before -> now | target before -> now |" if before else ""))
print("|---|---|---|" + ("---|---|" if before else ""))
for l in sys.argv[2:]:
    c = [x.strip() for x in l.strip("|").split("|")]
    extra = ""
    if c[0] in before:
        extra = " %s | %s |" % (change(c[1], before[c[0]][0]), change(c[2], before[c[0]][1]))
    elif before:
        extra = " | |"
    print(l + extra)
PY
  fi
  if [[ ${#scale[@]} -gt 0 ]]; then
    echo
    echo "## Scale: controllers × 4 I/O queues, QD 4 per queue, 4 KiB random reads"
    echo
    echo "Each controller is one admin and four I/O connections. RSS is the peak (VmHWM of the target, max RSS of"
    echo "\`holdfast bench\`, which holds every controller); the namespace is not written first, so its RAM is not"
    echo "allocated and the target's RSS is what the connections cost. Past 16 controllers the host is the side that"
    echo "runs out of CPU: each queue has its own receive buffer, channel, in-flight table and tasks, and once a few"
    echo "hundred queues take turns their working set no longer fits the core's caches, so the host's cost per I/O"
    echo "grows. (Measured once with busy polling off, 64 controllers against 16: host core 99 % busy, target 65 %;"
    echo "the host's user time per I/O 2.7 times as much.)"
    echo
    echo "| controllers | connections | IOPS | p50 µs | p99 µs | errors | target RSS MiB | host RSS MiB |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${scale[@]}"
    echo
    echo "## IOPS against I/O queues (one controller, QD 32 per queue, 4 KiB random reads)"
    echo
    echo "Both sides have one core each, so more queues add outstanding I/O, not CPU."
    echo
    echo "| queues | outstanding | IOPS | p50 µs | p99 µs |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${queues[@]}"
  fi
  if [[ -n $prev ]]; then
    echo
    echo "## Change against the previous table"
    echo
    python3 - "$prev" "$iperf_gbps" "$floor_us" "${rows[@]}" <<'PY'
import re, sys
prev, prev_ratio = {}, {}
for l in sys.argv[1].splitlines():
    c = [x.strip() for x in l.strip("|").split("|")]
    if len(c) >= 8 and c[1].isdigit() and not c[0].isdigit():
        prev[c[0]] = float(c[1])
        prev_ratio[c[0]] = c[7]
# The references the previous table was measured against: when they moved, the machine (or its load) did,
# and only the ratios compare.
m = re.search(r"128 KiB writes, same pinning: \*\*([0-9.]+) Gbit/s", sys.argv[1])
f = re.search(r"\*\*([0-9.]+) µs\*\* per round trip", sys.argv[1])
ip_now, fl_now = float(sys.argv[2]), float(sys.argv[3])
if m and f:
    ip_before, fl_before = float(m.group(1)), float(f.group(1))
    print("References: iperf3 %.2f -> %.2f Gbit/s, round-trip floor %.2f -> %.2f µs." % (ip_before, ip_now, fl_before, fl_now))
    if abs(ip_now / ip_before - 1) > 0.25 or abs(fl_now / fl_before - 1) > 0.25:
        print("The references moved by more than a quarter: the machine or its load changed since the previous")
        print("table, so compare the ratios to iperf3, not the IOPS.")
    print()
print("| point | IOPS before | IOPS now | change | ratio to iperf3 before | now |")
print("|---|---|---|---|---|---|")
for l in sys.argv[4:]:
    c = [x.strip() for x in l.strip("|").split("|")]
    if c[0] in prev and prev[c[0]] > 0:
        print("| %s | %d | %s | %+.1f %% | %s | %s |" % (c[0], prev[c[0]], c[1], (float(c[1]) / prev[c[0]] - 1) * 100, prev_ratio[c[0]], c[7]))
PY
  fi
  if [[ -n $sbs ]]; then
    echo
    printf '%s\n' "$sbs"
  fi
} >BENCHMARKS.md.new
mv BENCHMARKS.md.new BENCHMARKS.md
echo "wrote BENCHMARKS.md"
