# shellcheck shell=sh
# guest-target-dhchap.sh: vm.sh guest script for scripts/interop-kernel-target.sh's kernel-target-dhchap case
# (a kernel with NVMe target in-band authentication, CONFIG_NVME_TARGET_AUTH: Debian's 6.12, not 6.1). The
# guest is the Linux kernel target (nvmet-tcp, memory-backed null_blk) as target-role.sh sets it up, then made
# to require DH-HMAC-CHAP of host HOSTNQN alone, through configfs as nvmetcli would: hosts/HOSTNQN/dhchap_key,
# dhchap_ctrl_key and dhchap_hash, the subsystem's attr_allow_any_host 0 and an allowed_hosts link. holdfast's
# host, on this machine (vm.sh -H), then connects with its secrets.
# env: NQN, SIZE_MIB, BLOCK as target-role.sh; HOSTNQN, KEY, CKEY, HASH (hmac(sha384)); DHGROUP (the host's
# dhchap_dhgroup: null, as nvmet's default, unless set).
: "${NQN:?}" "${HOSTNQN:?}" "${KEY:?}" "${CKEY:?}"
S=/sys/kernel/config/nvmet
grep -q . /sys/module/nvme_auth/initstate 2>/dev/null || modprobe nvme-auth
nvmet_serve "$NQN" "$(make_backing nullb)"
mkdir "$S/hosts/$HOSTNQN"
echo "$KEY" >"$S/hosts/$HOSTNQN/dhchap_key"
echo "$CKEY" >"$S/hosts/$HOSTNQN/dhchap_ctrl_key"
echo "${HASH:-hmac(sha384)}" >"$S/hosts/$HOSTNQN/dhchap_hash"
[ -z "${DHGROUP:-}" ] || echo "$DHGROUP" >"$S/hosts/$HOSTNQN/dhchap_dhgroup"
echo 0 >"$S/subsystems/$NQN/attr_allow_any_host"
ln -s "$S/hosts/$HOSTNQN" "$S/subsystems/$NQN/allowed_hosts/$HOSTNQN"
log "nvmet: $NQN requires DH-HMAC-CHAP of $HOSTNQN ($(cat "$S/hosts/$HOSTNQN/dhchap_hash"), DH group $(cat "$S/hosts/$HOSTNQN/dhchap_dhgroup"))"
rc=0; wait_host || rc=$?
log "host command finished: exit $rc"
# What nvmet said of the exchanges (its pr_debug lines are off; its warnings and errors are not).
dmesg | grep -iE "nvmet.*(auth|dhchap)" | sed 's/^\[ *[0-9.]*\] /target-dhchap: kernel: /' | sort | uniq -c | head -n 20
exit "$rc"
