#!/usr/bin/env bash
# fuzz-replay.sh: build the fuzz harnesses (fuzz/, plain stable cargo: libFuzzer without coverage
# instrumentation) and run each on its committed corpus and regressions, so that every harness's checks run
# as tests on every CI run. Fuzzing itself (new inputs) is fuzz/README.md's `cargo fuzz run`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
export CARGO_TARGET_DIR=$root/target/fuzz-replay RUST_BACKTRACE=0
# --locked: fuzz/Cargo.lock is its own; refresh it with `cargo update -w` in fuzz/ when a workspace crate's
# dependencies change.
cargo build --quiet --locked
logs=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-replay.XXXXXX")
for t in fuzz_targets/*.rs; do
  t=$(basename "$t" .rs)
  inputs=()
  for d in corpus/"$t" regressions/"$t"; do
    if [[ -d $d ]]; then while IFS= read -r f; do inputs+=("$f"); done < <(find "$d" -type f | sort); fi
  done
  ((${#inputs[@]})) || { echo "fuzz-replay: no inputs for $t"; exit 1; }
  # libFuzzer runs each file given as an input once; it stops at the first crash (a panic aborts) or at an input
  # that runs past -timeout (a hang the harness's own timers cannot see).
  log=$logs/$t.log
  if ! "$CARGO_TARGET_DIR/debug/$t" -rss_limit_mb=4096 -timeout=120 "${inputs[@]}" >"$log" 2>&1; then
    grep '^Running: ' "$log" | tail -n 1
    grep -m 1 -A 3 -E 'panicked at|ERROR: libFuzzer' "$log" || tail -n 20 "$log"
    echo "fuzz-replay: $t failed on the input named above, one of its ${#inputs[@]} (log: $log)"
    exit 1
  fi
  echo "fuzz-replay: $t: ${#inputs[@]} inputs"
done
