# bench/common.sh: what the benchmark scripts (run.sh, ab.sh, icount.sh, side-by-side.sh, tcg-profile.sh) share.
# Sourced, not run.

# The host's core: the second one where there are two or more (the target is pinned to core 0).
hcore=$(($(nproc) > 1 ? 1 : 0))

# An ephemeral port on 127.0.0.1 that is free now.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# point_with_defaults FLAGS...: sets the array $point to the `holdfast bench` flags given, plus the default
# for each of --workload randread, --bs 4096 and --qd 32 not given (clap refuses a flag given twice).
point_with_defaults() {
  point=("$@")
  local d
  for d in "--workload randread" "--bs 4096" "--qd 32"; do
    [[ " $* " == *" ${d%% *} "* || " $* " == *" ${d%% *}="* ]] || point+=($d)
  done
}

# round_roles ROUNDS ROLE...: sets the array $roles to ROUNDS rounds of the VM scripts' role pairs ("kk kh ..."),
# the order reversed every other round, so that no pair always runs first (bench/guest/side-by-side.sh, ROLES).
round_roles() {
  local rounds=$1 i j
  shift
  roles=()
  for ((i = 0; i < rounds; i++)); do
    if ((i % 2 == 0)); then roles+=("$@"); else for ((j = $#; j >= 1; j--)); do roles+=("${!j}"); done; fi
  done
}
