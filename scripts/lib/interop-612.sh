# scripts/lib/interop-612.sh: Debian's 6.12 kernel for the interop scripts (interop-kernel-host.sh,
# interop-kernel-target.sh). Sourced, not run; needs $interop (the shared interop directory).
# Debian's 6.1 kernel has no NVMe in-band authentication (CONFIG_NVME_HOST_AUTH / CONFIG_NVME_TARGET_AUTH are
# off); 6.12 (linux-image-6.12-amd64, in bookworm) has both.

INTEROP_612_CACHE=${INTEROP_612_CACHE:-$HOME/.cache/nvme-interop-6.12}

# The shared interop scripts, with setup.sh building from Debian's 6.12 kernel package instead of the default
# (6.1) into a cache of its own ($INTEROP_612_CACHE): prints the directory of that copy. Run its scripts with
# NVME_INTEROP_CACHE=$INTEROP_612_CACHE. The shared files are not changed.
interop_612() {
  local dir=${INTEROP_612_DIR:-${TMPDIR:-/tmp}/holdfast-interop-6.12}
  rm -rf "$dir"; mkdir -p "$dir"; cp -r "$interop/." "$dir/"
  sed -i 's/apt-cache depends linux-image-amd64/apt-cache depends linux-image-6.12-amd64/;
          s/resolve linux-image-amd64/resolve linux-image-6.12-amd64/' "$dir/setup.sh"
  grep -q 'linux-image-6.12-amd64' "$dir/setup.sh" || { echo "interop_612: setup.sh no longer names its kernel package as expected" >&2; return 1; }
  NVME_INTEROP_CACHE=$INTEROP_612_CACHE "$dir/setup.sh" >&2 || return 1
  echo "$dir"
}
