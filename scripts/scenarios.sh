#!/usr/bin/env bash
# scenarios.sh: ride-through scenarios S1-S6 (issue 4) with holdfast's host, target and fault proxy, all on
# 127.0.0.1 with ephemeral ports. Every process started here is killed by PID on exit. Deadlines are checked
# with a tolerance of max(10 %, 500 ms); throughput is never asserted.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
bin=${HOLDFAST_BIN:-$root/target/release/holdfast}
work=$(mktemp -d "${TMPDIR:-/tmp}/holdfast-scenarios.XXXXXX")
nqn=nqn.2026-01.io.holdfast:scenario
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; true; }
trap cleanup EXIT
pass=0 fail=0
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { echo "$EPOCHREALTIME"; }
json() { python3 -c "import json,sys; d=json.load(open('$1')); print(eval('d'+sys.argv[1]))" "$2"; }

target() {  # target NAME PORT ARGS...: start a target, set TPID
  local name=$1 port=$2; shift 2
  "$bin" target --listen "127.0.0.1:$port" --nqn "$nqn" "$@" >>"$work/$name-target.log" 2>&1 &
  TPID=$!; pids+=("$TPID")
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.05; done
  echo "target $name did not start"; return 1
}
proxy() {  # proxy PORT UPSTREAM: sets PCTL (control address)
  "$bin" proxy --listen "127.0.0.1:$1" --upstream "127.0.0.1:$2" >"$work/proxy-$1.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do PCTL=$(sed -n 's/^control: //p' "$work/proxy-$1.log"); [[ -n $PCTL ]] && return 0; sleep 0.05; done
  return 1
}
pctl() { "$bin" proxy-ctl --control "$PCTL" "$@" >/dev/null; }
bench() {  # bench NAME PORT SECONDS ARGS...: background bench, sets BPID; JSON in $work/NAME.json
  local name=$1 port=$2 secs=$3; shift 3
  HOLDFAST_LOG=info "$bin" bench --addr "127.0.0.1:$port" --nqn "$nqn" --nsid 1 --bs 4096 --qd 16 --queues 2 --time "$secs" \
    --verify --json "$@" >"$work/$name.json" 2>"$work/$name.err" &
  BPID=$!; pids+=("$BPID")
}
check() {  # check NAME CONDITION-DESCRIPTION RESULT(0/1)
  if [[ $3 == 0 ]]; then pass=$((pass + 1)); echo "    pass: $2"; else fail=$((fail + 1)); echo "    FAIL: $2"; fi
}
within() {  # within ACTUAL EXPECTED: |actual-expected| <= max(10%, 0.5 s)
  python3 -c "import sys; a, e = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - e) <= max(0.1 * e, 0.5) else 1)" "$1" "$2"
}
summary() { echo "    bench: $(tr -d '\n' <"$work/$1.json" | head -c 400)"; }

s1() {
  echo "=== S1: kill -9 the target mid bench --verify (randrw, qd 16, 2 queues), restart it 3 s later"
  local p; p=$(free_port)
  local args=(--file "$work/s1.img" --size-mib 64 --block-size 4096 --reconnect-delay-ms 500)
  target s1 "$p" "${args[@]}" || return
  bench s1 "$p" 12 --workload randrw
  sleep 3; kill -9 "$TPID"; sleep 3
  target s1 "$p" "${args[@]}" || return
  wait "$BPID"; local rc=$?
  summary s1
  [[ $rc == 0 && $(json "$work/s1.json" '["errors"]') == 0 && $(json "$work/s1.json" '["verify_mismatches"]') == 0 \
     && $(json "$work/s1.json" '["outages"]') -ge 1 ]]
  check S1 "0 errors, 0 mismatches, the outage counted" $?
  kill "$TPID"
}

s2() {
  echo "=== S2: the target never returns; advertised ctrl_loss_tmo 5 s, no host override"
  local p; p=$(free_port)
  target s2 "$p" --ram-mib 64 --block-size 4096 --ctrl-loss-tmo-ms 5000 --reconnect-delay-ms 500 || return
  bench s2 "$p" 30 --workload randrw
  sleep 2; local t0; t0=$(now); kill -9 "$TPID"
  wait "$BPID"; local rc=$?; local dt; dt=$(python3 -c "print($(now) - $t0)")
  summary s2
  echo "    bench ended $(printf %.2f "$dt") s after the target died; stderr: $(grep -o 'controller lost.*' "$work/s2.err" | tail -n 1 | cut -c1-200)"
  # The policy is judged on the host's own clock (the failure says how long after the loss it came: "since
  # HH:MM:SS (5.0 s, limit 5.0 s)"), the whole run from outside with room for a loaded machine's stalls (a CPU
  # taken 500 ms at a time moved it to 5.4 s): the controller fails at ctrl_loss_tmo, and nothing hangs after.
  local after; after=$(grep -o 'controller lost.* since [^(]*([0-9.]* s, limit' "$work/s2.err" | tail -n 1 |
    sed 's/.*(\([0-9.]*\) s, limit$/\1/')
  echo "    the host failed the controller ${after:-?} s after the loss, by its own clock"
  [[ $rc != 0 && -n $after ]] && within "$after" 5 && python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 6.5 else 1)" "$dt"
  check S2 "fails 5 s after the loss by the host's clock, the run over within 6.5 s (non-zero exit, says the controller was lost), no hang" $?
}

s3() {
  echo "=== S3: blackhole through the proxy (KATO 2 s): loss detected within KATO, 0 errors after resume"
  local p pp; p=$(free_port); pp=$(free_port)
  target s3 "$p" --ram-mib 64 --block-size 4096 --kato-ms 2000 --reconnect-delay-ms 500 || return
  proxy "$pp" "$p" || return
  bench s3 "$pp" 14 --workload randrw
  sleep 3; local t0; t0=$(now); pctl blackhole
  sleep 5; pctl resume
  wait "$BPID"; local rc=$?
  summary s3
  local lost; lost=$(python3 - "$work/s3.err" "$t0" <<'PY'
import sys, re, datetime
for line in open(sys.argv[1], errors="replace"):
    if "connection lost" in line:
        m = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
        t = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
        print(round(t - float(sys.argv[2]), 2)); break
PY
)
  echo "    loss detected ${lost:-never} s after the blackhole began"
  [[ $rc == 0 && -n $lost ]] && python3 -c "import sys; sys.exit(0 if float('$lost') <= 2.0 + 0.5 else 1)" \
    && [[ $(json "$work/s3.json" '["errors"]') == 0 && $(json "$work/s3.json" '["verify_mismatches"]') == 0 ]]
  check S3 "detected within KATO, 0 errors and 0 mismatches after resume" $?
  kill "$TPID"
}

s4() {
  echo "=== S4: the proxy cuts every connection every 500 ms for 10 s"
  local p pp; p=$(free_port); pp=$(free_port)
  target s4 "$p" --file "$work/s4.img" --size-mib 64 --block-size 4096 --reconnect-delay-ms 100 || return
  proxy "$pp" "$p" || return
  bench s4 "$pp" 14 --workload randrw
  sleep 1; pctl flap 500; sleep 10; pctl resume
  wait "$BPID"; local rc=$?
  summary s4
  [[ $rc == 0 && $(json "$work/s4.json" '["errors"]') == 0 && $(json "$work/s4.json" '["verify_mismatches"]') == 0 \
     && $(json "$work/s4.json" '["outages"]') -ge 5 ]]
  check S4 "0 errors, 0 mismatches through the cut storm" $?
  kill "$TPID"
}

s5() {
  echo "=== S5: planned restart announced with 20 s downtime, ctrl_loss_tmo 5 s, actual restart after 10 s"
  local p; p=$(free_port)
  local args=(--file "$work/s5.img" --size-mib 64 --block-size 4096 --ctrl-loss-tmo-ms 5000 --reconnect-delay-ms 500)
  target s5 "$p" "${args[@]}" || return
  bench s5 "$p" 16 --workload randrw
  sleep 2; "$bin" target-ctl --port "$p" announce-restart --downtime 20s; sleep 1
  kill "$TPID"; sleep 10
  target s5 "$p" "${args[@]}" || return
  wait "$BPID"; local rc=$?
  summary s5
  [[ $rc == 0 && $(json "$work/s5.json" '["errors"]') == 0 && $(json "$work/s5.json" '["verify_mismatches"]') == 0 ]]
  check S5 "rides through a 10 s planned outage past the 5 s ctrl_loss_tmo" $?
  # Inside the planned window the host retries every reconnect_delay (no backoff), so it is back within
  # about that of the restart: 10 s down + 0.5 s delay, with the max(10 %, 500 ms) tolerance.
  # The host's own figure, from the loss noticed to the reconnect (longest_stall_ms is the application's, from
  # the last I/O that succeeded before to the first after).
  local outage; outage=$(json "$work/s5.json" '["longest_outage_ms"]')
  python3 -c "import sys; sys.exit(0 if int(sys.argv[1]) <= 1.1 * 10500 else 1)" "$outage"
  check S5-prompt "back ${outage} ms after the loss: no backoff inside the planned window" $?
  kill "$TPID"
}

s6_run() {  # s6_run NAME EXTRA-TARGET-ARGS...: writes held back 1.5 s (every 40th), two cuts
  local name=$1; shift
  local p pp; p=$(free_port); pp=$(free_port)
  target "$name" "$p" --ram-mib 16 --block-size 4096 --reconnect-delay-ms 100 --test-delay-writes-ms 1500 --test-delay-every 40 "$@" || return 1
  proxy "$pp" "$p" || return 1
  bench "$name" "$pp" 9 --workload randrw --size 1048576
  sleep 2; pctl cut; sleep 3; pctl cut
  wait "$BPID"
  summary "$name"
  kill "$TPID"
}
s6() {
  echo "=== S6: stale-write attempt (held-back writes + cut connections)"
  s6_run s6
  [[ $(json "$work/s6.json" '["verify_mismatches"]') == 0 && $(json "$work/s6.json" '["errors"]') == 0 \
     && $(json "$work/s6.json" '["outages"]') -ge 2 ]]
  check S6 "0 mismatches with the drain, across both cuts" $?
  echo "    ... and with the drain switched off (test-only flag), the stale writes must show:"
  s6_run s6-nodrain --test-no-drain
  [[ $(json "$work/s6-nodrain.json" '["verify_mismatches"]') -gt 0 ]]
  check S6-control "mismatches without the drain (the test can fail)" $?
}

[[ -x $bin ]] || { echo "no $bin: build with cargo build --release"; exit 2; }
# Checks each scenario makes: one that returns early (a target or proxy that did not start) made fewer, and
# the run fails for it as for a failed check.
declare -A checks=([s1]=1 [s2]=1 [s3]=1 [s4]=1 [s5]=2 [s6]=2)
expected=0
for s in ${SCENARIOS:-s1 s2 s3 s4 s5 s6}; do
  [[ -n ${checks[$s]:-} ]] || { echo "scenarios: no scenario $s (s1 to s6)"; exit 2; }
  expected=$((expected + checks[$s]))
  "$s"
done
if ((fail == 0 && pass == expected)); then
  echo "scenarios: $pass passed, 0 failed"
  rm -rf "$work"
else
  echo "scenarios: $pass passed, $fail failed, $((expected - pass - fail)) never ran (logs in $work)"
  exit 1
fi
