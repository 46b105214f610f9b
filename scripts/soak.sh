#!/usr/bin/env bash
# soak.sh: random faults under verified I/O. `holdfast bench --verify --digests` (random reads and writes, QD 32
# on each of 4 queues: every fast path at once: batched capsules, the read look-ahead, digests, re-issue after
# reconnect) against a target that takes a fault every 1-3 s, for 0.2-1.5 s, from a seeded schedule. Three
# phases:
#   4k, 128k        a RAM target behind holdfast's fault proxy, 4 KiB then 128 KiB blocks (R2T, multi-PDU
#                   transfers); faults: cut (connections reset; always the first), blackhole (silence),
#                   delay 30 ms, flap 300 ms;
#   4k-file-kill    a file namespace whose target is killed (SIGKILL) at each fault and started again after the
#                   hold (the page cache keeps what was acknowledged).
# Passes if every run ends with 0 errors, 0 verify mismatches, at least one outage ridden through, and no panic
# in any log.
#
#   scripts/soak.sh [SECONDS per phase, default 15]
#   env: SOAK_SEED (default: random, printed) to replay the fault schedules; HOLDFAST_BIN.
#
# All on 127.0.0.1 with ephemeral ports; every process started here is killed by PID on exit.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
bin=${HOLDFAST_BIN:-$root/target/release/holdfast}
secs=${1:-15}
seed=${SOAK_SEED:-$RANDOM$RANDOM}
work=$(mktemp -d "${TMPDIR:-/tmp}/holdfast-soak.XXXXXX")
nqn=nqn.2026-01.io.holdfast:soak
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

# A fault schedule: "GAP|FAULT|HOLD" per line, enough for the whole phase.
schedule() {  # schedule SEED SECONDS
  python3 - "$1" "$2" <<'PY'
import random, sys
rng = random.Random(int(sys.argv[1])); t = 0.0; first = True
while t < float(sys.argv[2]):
    gap, hold = rng.uniform(1, 3), rng.uniform(0.2, 1.5)
    # The first is always a cut, so that every phase has an outage to ride through.
    fault = "cut" if first else rng.choice(["cut", "cut", "blackhole", "delay 30", "flap 300"])
    print("%.2f|%s|%.2f" % (gap, fault, hold))
    t += gap + hold; first = False
PY
}

# Phase state, shared by its helpers.
name="" tport="" tpid="" backend=()
start_target() {  # on $tport, appending to the phase's log; sets tpid
  "$bin" target --listen "127.0.0.1:$tport" --nqn "$nqn" "${backend[@]}" --block-size 4096 --reconnect-delay-ms 200 \
    >>"$work/$name-target.log" 2>&1 &
  tpid=$!; pids+=("$tpid")
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$tport") 2>/dev/null && return 0; sleep 0.05; done
  echo "    the $name target did not start"
}

fail=0
phase() {  # phase NAME BS N MODE: the Nth phase draws its faults from SOAK_SEED + N; MODE proxy or kill
  name=$1; local bs=$2 n=$3 mode=$4 port ctl="" ppid="" bpid rc faults=0
  tport=$(free_port); port=$tport
  if [[ $mode == kill ]]; then backend=(--file "$work/$name.img" --size-mib 128); else backend=(--ram-mib 256); fi
  start_target
  if [[ $mode == proxy ]]; then
    port=$(free_port)
    "$bin" proxy --listen "127.0.0.1:$port" --upstream "127.0.0.1:$tport" >"$work/$name-proxy.log" 2>&1 &
    ppid=$!; pids+=("$ppid")
    for _ in $(seq 100); do ctl=$(sed -n 's/^control: //p' "$work/$name-proxy.log"); [[ -n $ctl ]] && break; sleep 0.05; done
    [[ -n $ctl ]] || { echo "    FAIL ($name): the proxy did not start"; fail=1; return; }
  fi
  HOLDFAST_LOG=warn "$bin" bench --addr "127.0.0.1:$port" --nqn "$nqn" --workload randrw --bs "$bs" --qd 32 --queues 4 \
    --time "$secs" --verify --digests --json >"$work/$name.json" 2>"$work/$name.err" &
  bpid=$!; pids+=("$bpid")
  while IFS="|" read -r gap fault hold; do
    sleep "$gap"; kill -0 "$bpid" 2>/dev/null || break
    if [[ $mode == kill ]]; then
      kill -9 "$tpid"; wait "$tpid" 2>/dev/null; faults=$((faults + 1))
      sleep "$hold"
      start_target
    else
      # shellcheck disable=SC2086 # "delay 30" is a command and its argument
      "$bin" proxy-ctl --control "$ctl" $fault >/dev/null && faults=$((faults + 1))
      sleep "$hold"
      "$bin" proxy-ctl --control "$ctl" resume >/dev/null
    fi
  done < <(schedule "$((seed + n))" "$secs")
  wait "$bpid"; rc=$?
  kill "$tpid" $ppid 2>/dev/null
  local errors mismatches outages
  errors=$(json "$work/$name.json" errors 2>/dev/null || echo "?")
  mismatches=$(json "$work/$name.json" verify_mismatches 2>/dev/null || echo "?")
  outages=$(json "$work/$name.json" outages 2>/dev/null || echo "?")
  echo "    $name: $faults faults, bench exit $rc, $(json "$work/$name.json" ops 2>/dev/null || echo "?") I/Os," \
    "errors $errors, verify mismatches $mismatches, outages $outages"
  if [[ $rc != 0 || $errors != 0 || $mismatches != 0 || ! $outages =~ ^[0-9]+$ || $outages -lt 1 ]] \
    || grep -qi panic "$work/$name"-*.log "$work/$name.err"; then
    echo "    FAIL ($name): see $work"; tail -n 20 "$work/$name.err"; fail=1
  fi
}

echo "=== soak: random faults under bench --verify --digests, $secs s per phase, SOAK_SEED=$seed"
phase 4k 4096 0 proxy
phase 128k 131072 1 proxy
phase 4k-file-kill 4096 2 kill
if [[ $fail == 0 ]]; then echo "    pass: 0 errors, 0 mismatches, every phase rode through its faults"; rm -rf "$work"; fi
exit $fail
