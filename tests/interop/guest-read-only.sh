# shellcheck shell=sh
# guest-read-only.sh: kernel-host.sh --guest-script for holdfast's target serving a file namespace write
# protected (--read-only). The Linux host must take it as a read-only disk (Identify Namespace NSATTR bit 0:
# /sys/block/X/ro reads 1), read the image the target serves (its MD5 is IMG_MD5), and refuse a write itself,
# with no NVMe or I/O error in its log (a write that reached the target would fail there and be logged).
: "${PORT:?}" "${NQN:?}" "${IMG_MD5:?}" "${IMG_MIB:?}"
nvme connect -t tcp -a 10.0.2.2 -s "$PORT" -n "$NQN" -i 1 -k 5
dev=$(ns_dev "$NQN"); blk=${dev#/dev/}
ro=$(cat "/sys/block/$blk/ro")
[ "$ro" = 1 ] || { echo "namespace 1: /sys/block/$blk/ro is $ro, not 1"; exit 1; }
echo "namespace 1: read-only to the kernel ($blk ro=1)"
sum=$(dd if="$dev" bs=1M count="$IMG_MIB" iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
[ "$sum" = "$IMG_MD5" ] || { echo "namespace 1: read $sum, the image is $IMG_MD5"; exit 1; }
echo "namespace 1: reads the image ($IMG_MIB MiB, md5 $sum)"
if dd if=/dev/zero of="$dev" bs=4096 count=1 oflag=direct 2>/tmp/err; then
  echo "namespace 1: a write to the read-only disk succeeded"; exit 1
fi
echo "namespace 1: a write is refused: $(head -n 1 /tmp/err)"
nvme disconnect -n "$NQN"
kernel_errors
echo READ-ONLY-PASSED
