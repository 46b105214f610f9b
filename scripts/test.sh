#!/usr/bin/env bash
# test.sh: everything CI checks, on a fresh Debian machine (as root): packages, the interop VM cache,
# formatting, lints, unit and loopback integration tests, then the Linux-kernel interop checks.
#   SKIP_INTEROP=1  skip the VM-based checks (said at the end; refused when CI=true)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export DEBIAN_FRONTEND=noninteractive CARGO_TERM_COLOR=never
need=()
for p in tcpdump tshark python3; do command -v "$p" >/dev/null || need+=("$p"); done
if ((${#need[@]})); then
  echo "test.sh: installing ${need[*]}"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The interop checks (and the Wireshark decoding of their captures) are skipped only on request, never in CI,
# and a run that skipped them says so.
if [[ ${SKIP_INTEROP:-0} == 1 && ${CI:-} == true ]]; then
  echo "test.sh: SKIP_INTEROP=1 in CI: the interop and Wireshark checks may not be skipped there"; exit 1
fi
if [[ ${SKIP_INTEROP:-0} != 1 ]]; then ../shared/interop/setup.sh >/dev/null; fi
echo "== cargo fmt --check"; cargo fmt --all -- --check
echo "== cargo clippy"; cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== fuzz harnesses: replay the committed corpora and regressions"; scripts/fuzz-replay.sh
echo "== cargo build --release"; cargo build --release --quiet
echo "== cargo test"; HOLDFAST_BIN=$root/target/release/holdfast cargo test --workspace --quiet 2>&1 | tee /tmp/holdfast-cargo-test.log
grep -q "test result: FAILED" /tmp/holdfast-cargo-test.log && exit 1
echo "== ride-through scenarios S1-S6"; scripts/scenarios.sh
echo "== NBD bridge: qemu-io, qemu-img, nbdcopy, nbdinfo, and a target restart under qemu-io"; scripts/interop-nbd.sh
echo "== soak: random faults under bench --verify --digests"; scripts/soak.sh 15
if [[ ${SKIP_INTEROP:-0} != 1 ]]; then
  echo "== interop: Linux kernel host -> holdfast target"; scripts/interop-kernel-host.sh
  echo "== interop: holdfast host -> Linux kernel target"; scripts/interop-kernel-target.sh
  echo "== interop: Linux kernel NBD device through holdfast nbd --device"; scripts/interop-nbd-device.sh
  echo "== scenario S7: Linux kernel host + ext4 rides through a target kill and restart"
  scripts/scenario-linux-ride-through.sh >/tmp/holdfast-s7.log 2>&1 || { tail -n 60 /tmp/holdfast-s7.log; exit 1; }
  grep -E "files written across|verified after remount|RIDE-THROUGH-PASSED" /tmp/holdfast-s7.log
else
  echo "== SKIPPED (SKIP_INTEROP=1): the Linux-kernel interop checks, S7 and their Wireshark capture checks"
  echo "test.sh: all checks passed but the interop checks, which were SKIPPED"; exit 0
fi
echo "test.sh: all checks passed"
