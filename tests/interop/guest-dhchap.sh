# shellcheck shell=sh
# guest-dhchap.sh: kernel-host.sh --guest-script for holdfast's target requiring DH-HMAC-CHAP of host HOSTNQN
# (a kernel with NVMe in-band authentication: CONFIG_NVME_HOST_AUTH, so 6.12, not Debian's 6.1).
#   1. --dhchap-secret KEY: the kernel authenticates every queue (the target's Connect response asks it to),
#      then writes and reads back data;
#   2. the same with --dhchap-ctrl-secret CKEY: bidirectional, the kernel checks the controller's response;
#   3. host HOSTNQN_DH, whose exchanges use DH group ffdhe3072 (the target's dhchap_dhgroup for it),
#      bidirectionally: both sides' DH values and the augmented challenges, then I/O;
#   4. a wrong secret (WRONG_KEY): the connect fails and the kernel logs that authentication failed.
: "${PORT:?}" "${NQN:?}" "${HOSTNQN:?}" "${HOSTNQN_DH:?}" "${KEY:?}" "${CKEY:?}" "${WRONG_KEY:?}"
grep -q . /sys/module/nvme_auth/initstate 2>/dev/null || modprobe nvme-auth
conn() { h=$1; shift; nvme connect -t tcp -a 10.0.2.2 -s "$PORT" -n "$NQN" --hostnqn "$h" -i 2 -k 5 "$@"; }

conn "$HOSTNQN" --dhchap-secret "$KEY"
dev=$(ns_dev "$NQN")
rw_check "$dev" 8
dmesg | grep -E "authenticated with hash" | tail -n 1 | sed 's/^\[ *[0-9.]*\] /dhchap: /'
nvme disconnect -n "$NQN" >/dev/null
echo "dhchap: unidirectional: connected, I/O checked"

conn "$HOSTNQN" --dhchap-secret "$KEY" --dhchap-ctrl-secret "$CKEY"
dev=$(ns_dev "$NQN")
rw_check "$dev" 8
dmesg | grep -qE "controller authenticated" || { echo "dhchap: the kernel did not log the controller authenticated"; exit 1; }
dmesg | grep -E "controller authenticated" | tail -n 1 | sed 's/^\[ *[0-9.]*\] /dhchap: /'
nvme disconnect -n "$NQN" >/dev/null
echo "dhchap: bidirectional: connected, controller authenticated, I/O checked"
kernel_errors

dmesg -c >/dev/null
conn "$HOSTNQN_DH" --dhchap-secret "$KEY" --dhchap-ctrl-secret "$CKEY"
dev=$(ns_dev "$NQN")
rw_check "$dev" 8
dmesg | grep -qE "authenticated with hash .* dhgroup ffdhe3072" || { echo "dhchap: the kernel did not log ffdhe3072:"; dmesg | tail -n 20; exit 1; }
dmesg | grep -E "dhgroup ffdhe3072" | tail -n 1 | sed 's/^\[ *[0-9.]*\] /dhchap: /'
nvme disconnect -n "$NQN" >/dev/null
echo "dhchap: ffdhe3072, bidirectional: connected, I/O checked"
kernel_errors

dmesg -c >/dev/null
if conn "$HOSTNQN" --dhchap-secret "$WRONG_KEY" 2>/tmp/err; then
  echo "dhchap: a wrong secret connected"; exit 1
fi
echo "dhchap: a wrong secret is refused: $(head -n 1 /tmp/err)"
dmesg | grep -q "authentication failed" || { echo "dhchap: no 'authentication failed' in the kernel log:"; dmesg | tail -n 20; exit 1; }
dmesg | grep "authentication failed" | head -n 1 | sed 's/^\[ *[0-9.]*\] /dhchap: kernel: /'
echo DHCHAP-PASSED
