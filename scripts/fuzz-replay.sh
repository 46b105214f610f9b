#!/usr/bin/env bash
# fuzz-replay.sh: build the fuzz harnesses (fuzz/, plain stable cargo: libFuzzer without coverage
# instrumentation) and run each on its committed corpus and regressions, so that every harness's checks run
# as tests on every CI run. Fuzzing itself (new inputs) is fuzz/README.md's `cargo fuzz run`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
export CARGO_TARGET_DIR=$root/target/fuzz-replay
cargo build --quiet
for t in fuzz_targets/*.rs; do
  t=$(basename "$t" .rs)
  inputs=()
  for d in corpus/"$t" regressions/"$t"; do
    if [[ -d $d ]]; then while IFS= read -r f; do inputs+=("$f"); done < <(find "$d" -type f | sort); fi
  done
  ((${#inputs[@]})) || { echo "fuzz-replay: no inputs for $t"; exit 1; }
  # libFuzzer runs each file given as an input once; it stops at the first crash (a panic aborts).
  if ! "$CARGO_TARGET_DIR/debug/$t" -rss_limit_mb=4096 "${inputs[@]}" >/tmp/fuzz-replay-"$t".log 2>&1; then
    tail -n 40 /tmp/fuzz-replay-"$t".log
    echo "fuzz-replay: $t failed on one of its ${#inputs[@]} inputs (log: /tmp/fuzz-replay-$t.log)"
    exit 1
  fi
  echo "fuzz-replay: $t: ${#inputs[@]} inputs"
done
