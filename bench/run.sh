#!/usr/bin/env bash
# bench/run.sh: the benchmark suite. The target is pinned to core 0 and `holdfast bench` to core 1 (RAM
# namespace, 4 KiB blocks, loopback); iperf3 over loopback with the same pinning is measured in the same run
# as the reference. Writes BENCHMARKS.md: each figure, its throughput as a ratio of the iperf3 reference, and
# the change against the previously committed table. Figures are noisy on shared machines: compare ratios.
#   BENCH_SECONDS (5) per point; BENCH_QUICK=1 runs a reduced matrix.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
secs=${BENCH_SECONDS:-5}
command -v iperf3 >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null; }
cargo build --release --quiet
bin=$root/target/release/holdfast
work=$(mktemp -d "${TMPDIR:-/tmp}/holdfast-bench.XXXXXX")
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; true' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cores=$(nproc); tcore=0; hcore=$((cores > 1 ? 1 : 0))

# Reference: iperf3, one stream, 128 KiB writes.
ip=$(free_port)
taskset -c $tcore iperf3 -s -p "$ip" -1 >/dev/null 2>&1 & pids+=("$!")
sleep 0.5
iperf_gbps=$(taskset -c $hcore iperf3 -c 127.0.0.1 -p "$ip" -t "$secs" -l 128K -J | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9, 2))')
echo "iperf3 loopback, 1 stream, 128 KiB: $iperf_gbps Gbit/s"

port=$(free_port); nqn=nqn.2026-01.io.holdfast:bench
taskset -c $tcore "$bin" target --listen "127.0.0.1:$port" --nqn "$nqn" --ram-mib 1024 --block-size 4096 >"$work/target.log" 2>&1 &
pids+=("$!"); sleep 0.5
rows=()
point() {  # point LABEL WORKLOAD BS QD QUEUES [--digests]
  local label=$1 wl=$2 bs=$3 qd=$4 q=$5; shift 5
  local j; j=$(taskset -c $hcore "$bin" bench --addr "127.0.0.1:$port" --nqn "$nqn" --workload "$wl" --bs "$bs" --qd "$qd" \
    --queues "$q" --time "$secs" --size 1073741824 --json "$@")
  local line; line=$(python3 -c '
import json, sys
d = json.loads(sys.argv[1]); ref = float(sys.argv[2])
gbps = d["mbps"] * 8 / 1000
print("| %s | %d | %.1f | %d | %d | %d | %.3f |" % (sys.argv[3], d["iops"], d["mbps"], d["lat_us"]["p50"], d["lat_us"]["p99"], d["errors"], gbps / ref))
' "$j" "$iperf_gbps" "$label")
  echo "$line"; rows+=("$line")
}
point "4 KiB randread QD1" randread 4096 1 1
point "4 KiB randread QD32" randread 4096 32 1
point "4 KiB randwrite QD32" randwrite 4096 32 1
point "128 KiB read QD16" read 131072 16 1
point "128 KiB write QD16" write 131072 16 1
if [[ ${BENCH_QUICK:-0} != 1 ]]; then
  point "4 KiB randread QD128" randread 4096 128 1
  point "4 KiB randwrite QD1" randwrite 4096 1 1
  point "4 KiB randwrite QD128" randwrite 4096 128 1
  point "4 KiB randread QD32, 2 queues" randread 4096 16 2
  point "4 KiB randread QD32, digests" randread 4096 32 1 --digests
  point "128 KiB read QD16, digests" read 131072 16 1 --digests
fi

prev=""; [[ -f BENCHMARKS.md ]] && prev=$(cat BENCHMARKS.md)
{
  echo "# Benchmarks"
  echo
  echo "Produced by \`bench/run.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -r)): target pinned to core $tcore,"
  echo "\`holdfast bench\` pinned to core $hcore, RAM namespace with 4 KiB blocks, loopback, $secs s per point."
  echo "Reference in the same run: iperf3, one stream, 128 KiB writes, same pinning: **$iperf_gbps Gbit/s**."
  echo "*ratio* = the point's throughput / the iperf3 reference. Numbers on shared machines are noisy: compare ratios."
  echo
  echo "| point | IOPS | MB/s | p50 µs | p99 µs | errors | ratio to iperf3 |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  if [[ -n $prev ]]; then
    echo
    echo "## Change against the previous table"
    echo
    python3 - "$prev" "${rows[@]}" <<'PY'
import sys
prev = {}
for l in sys.argv[1].splitlines():
    c = [x.strip() for x in l.strip("|").split("|")]
    if len(c) == 7 and c[1].isdigit():
        prev[c[0]] = float(c[1])
print("| point | IOPS before | IOPS now | change |")
print("|---|---|---|---|")
for l in sys.argv[2:]:
    c = [x.strip() for x in l.strip("|").split("|")]
    if c[0] in prev and prev[c[0]] > 0:
        print("| %s | %d | %s | %+.1f %% |" % (c[0], prev[c[0]], c[1], (float(c[1]) / prev[c[0]] - 1) * 100))
PY
  fi
} >BENCHMARKS.md.new
mv BENCHMARKS.md.new BENCHMARKS.md
echo "wrote BENCHMARKS.md"
