#!/usr/bin/env bash
# nvme-tcp-check-loopback.sh PCAP PORT: ../shared/captures/nvme-tcp-check.sh (Wireshark's NVMe/TCP dissector,
# digests checked), plus one rule for what the loopback TCP stack itself does when a peer is slow to ack.
#
# On this machine the Linux host runs in a TCG VM behind QEMU's user network, so its TCP peer here is QEMU,
# often descheduled for milliseconds. The kernel's tail-loss probes then resend a segment the receiver already
# had (nstat: TcpExtTCPLossProbes, TcpExtTCPDSACKRecv), and the receiver answers with a D-SACK. With sequence
# analysis off (as nvme-tcp-check.sh runs it) Wireshark reports the resent copy as "New fragment overlaps old
# data (retransmission?)", an Error/Malformed note at the TCP layer, and the D-SACK ack as a warning. Neither
# is an NVMe/TCP fault: the PDUs in the original segment were decoded and their digests checked.
#
# So when nvme-tcp-check.sh fails, every frame it flagged is looked at again, and the capture passes only if
# each one is exactly one of:
#   - an ACK whose only note is its D-SACK block (a pure ACK, or one riding on a data segment of ours: the
#     PDUs in that segment were decoded and checked like any other, and would add notes of their own), or
#   - a data segment whose only note is the TCP overlap, and whose whole byte range the receiver D-SACKed
#     (the receiver's own word that those bytes were a duplicate of what it had already taken), or
#   - such a segment that the receiver did not D-SACK whole (a resend split in two, only the second half
#     D-SACKed: seen in CI), whose bytes are, byte for byte, those an earlier segment of the capture carried
#     at the same sequence numbers: the byte stream the PDUs were decoded from is the same either way.
# Anything else (a malformed NVMe/TCP PDU, a bad header or data digest, an overlap the receiver did not
# D-SACK, any other note) fails, and is printed.
#
# With --expect-c2h-success (a host that disabled SQ flow control), the capture must also hold C2HData PDUs
# with the SUCCESS flag: reads completed by their data alone, no CapsuleResp.
set -euo pipefail
[[ $# -eq 2 || ( $# -eq 3 && $3 == --expect-c2h-success ) ]] || {
  echo "usage: $0 PCAP PORT [--expect-c2h-success]" >&2; exit 2; }
pcap=$1 port=$2
here=$(cd "$(dirname "$0")" && pwd)
check=${NVME_TCP_CHECK:-$here/../../shared/captures/nvme-tcp-check.sh}

# Run CMD, again (up to three times in all) if it was killed by a signal: Debian's tshark 4.0 has died here of a
# general protection fault in libwsutil while reading a capture that the next run read cleanly (CI, a 53 MB
# capture: `traps: tshark ... general protection fault ... in libwsutil.so`). A crash is no verdict on the
# PDUs; any exit the program chose (a failed check included) is returned as it is.
again_if_crashed() {
  local rc tries=0
  while :; do
    rc=0; "$@" || rc=$?
    ((rc > 128 && ++tries < 3)) || return "$rc"
    echo "nvme-tcp-check-loopback: $1 died of signal $((rc - 128)); running it again" >&2
  done
}

# C2HData PDUs with the SUCCESS flag in capture $1 (fails if tshark keeps crashing on it).
count_success() {
  again_if_crashed tshark -r "$1" -d "tcp.port==$port,nvme-tcp" -Y "nvme-tcp.flags.pdu.data_success == 1" 2>/dev/null | wc -l
}
expect_success() {  # expect_success N
  echo "nvme-tcp-check-loopback: C2HData with SUCCESS (no CapsuleResp): $1 frames"
  (($1 > 0)) || { echo "nvme-tcp-check-loopback: no C2HData with SUCCESS in $pcap"; exit 1; }
}
success=""
if [[ ${3:-} == --expect-c2h-success ]]; then
  # Counted connection by connection below if tshark cannot read the whole capture.
  if success=$(count_success "$pcap"); then expect_success "$success"; else success=pieces; fi
fi

rc=0
out=$(again_if_crashed "$check" "$pcap" "$port") || rc=$?
if ((rc > 128)) && [[ -z ${NVME_TCP_CHECK_PIECE:-} ]]; then
  # Some captures crash tshark 4.0 every time (a segfault in libwsutil, CI: a 52 MB capture of several
  # connections, at the same frame each run), while each of their TCP connections read alone passes: the
  # dissector's state across connections is what breaks. NVMe/TCP framing and digests are per connection, so
  # each connection is then checked on its own, every one of them the whole check.
  echo "nvme-tcp-check-loopback: tshark died of signal $((rc - 128)) on the whole capture, three times; checking each TCP connection alone"
  pieces=$(mktemp -d "${TMPDIR:-/tmp}/nvme-tcp-pieces.XXXXXX")
  trap 'rm -rf "$pieces"' EXIT
  ports=$(tshark -r "$pcap" -T fields -e tcp.srcport -e tcp.dstport 2>/dev/null | tr '\t' '\n' | sort -un | grep -vx "$port")
  [[ -n $ports ]] || { echo "nvme-tcp-check-loopback: no TCP connection found in $pcap"; exit 1; }
  n=0
  for p in $ports; do
    tcpdump -r "$pcap" -w "$pieces/$p.pcap" "tcp port $p" 2>/dev/null
    echo "--- connection from port $p"
    NVME_TCP_CHECK_PIECE=1 "$0" "$pieces/$p.pcap" "$port" || exit 1
    if [[ $success == pieces ]]; then n=$((n + $(count_success "$pieces/$p.pcap"))); fi
  done
  if [[ $success == pieces ]]; then expect_success "$n"; fi
  exit 0
fi
[[ $success != pieces ]] || { echo "nvme-tcp-check-loopback: tshark could not count SUCCESS frames in $pcap"; exit 1; }
if ((rc == 0)); then
  echo "$out"
  # It passes a capture it could not read, or one without NVMe/TCP: a check of nothing is a failure here.
  grep -qE 'nvme-tcp-check: [1-9][0-9]* NVMe/TCP PDUs' <<<"$out" || { echo "nvme-tcp-check-loopback: no NVMe/TCP PDU in $pcap"; exit 1; }
  exit 0
fi
# Only a verdict is looked at again: a check that failed without one (tshark could not read the capture to the
# end, or the check did not run at all) is a failure here too, whatever notes the capture holds.
grep -q '^nvme-tcp-check: packets Wireshark finds malformed' <<<"$out" || {
  echo "$out"; echo "nvme-tcp-check-loopback: $check failed (exit $rc) without flagging any packet"; exit 1; }
# Its verdict and flagged frames, without its per-PDU counts ("  12 NVMe Write": a count, then no arrow).
official=$(awk '!/^ *[0-9]+ / || /→/' <<<"$out")

ts=(again_if_crashed tshark -r "$pcap" -d "tcp.port==$port,nvme-tcp" -o nvme-tcp.check_hdgst:TRUE -o nvme-tcp.check_ddgst:TRUE
    -o tcp.analyze_sequence_numbers:FALSE)
flt="_ws.malformed || _ws.expert.severity >= warning || nvme-tcp.hdgst.status == 0 || nvme-tcp.ddgst.status == 0"
fields=(-T fields -E separator=$'\t' -E occurrence=a -E aggregator='|')
dsacks=$("${ts[@]}" -Y tcp.options.sack.dsack "${fields[@]}" -e tcp.stream -e tcp.dstport \
  -e tcp.options.sack.dsack_le -e tcp.options.sack.dsack_re 2>/dev/null) ||
  { echo "$official"; echo "nvme-tcp-check-loopback: tshark could not list the D-SACKs in $pcap"; exit 1; }
# A partial list (tshark stopped part way) would leave frames unexamined: it is a failure, not a shorter list.
flagged=$("${ts[@]}" -Y "$flt" "${fields[@]}" -e frame.number -e tcp.stream -e tcp.srcport -e tcp.seq -e tcp.len \
  -e nvme-tcp.hdgst.status -e nvme-tcp.ddgst.status -e _ws.expert.message 2>/dev/null) ||
  { echo "$official"; echo "nvme-tcp-check-loopback: tshark could not list the flagged frames in $pcap"; exit 1; }
[[ -n $flagged ]] || { echo "$official"; echo "nvme-tcp-check-loopback: check failed but tshark lists no flagged frame"; exit 1; }

verdict=$(awk -F'\t' -v dsacks="$dsacks" '
  BEGIN {
    n = split(dsacks, lines, "\n")
    for (i = 1; i <= n; i++) {
      if (split(lines[i], f, "\t") == 4) { stream[i] = f[1]; port[i] = f[2]; le[i] = f[3]; re[i] = f[4] }
    }
  }
  function acked_dup(st, src, seq, len,   i) {  # did the receiver D-SACK all of [seq, seq+len) sent from src?
    for (i in port) if (stream[i] == st && port[i] == src && le[i] + 0 <= seq + 0 && seq + len <= re[i] + 0) return 1
    return 0
  }
  {
    frame = $1; st = $2; src = $3; seq = $4; len = $5; hd = $6; dd = $7; msg = $8
    if (hd ~ /(^|\|)0($|\|)/ || dd ~ /(^|\|)0($|\|)/) { print "frame " frame ": bad digest"; bad++; next }
    if (msg == "D-SACK Sequence") { dsack_acks++; next }
    if (msg == "New fragment overlaps old data (retransmission?)" && len > 0 && acked_dup(st, src, seq, len)) { dups++; next }
    if (msg == "New fragment overlaps old data (retransmission?)" && len > 0) { print "resend " frame " " st " " src; next }
    print "frame " frame ": " msg " (seq " seq ", len " len ")"; bad++
  }
  END { printf "summary %d %d %d\n", bad, dups, dsack_acks }' <<<"$flagged")

summary=$(tail -n 1 <<<"$verdict"); read -r _ bad dups acks <<<"$summary"
# Overlapping segments the receiver did not D-SACK whole: each must repeat bytes the capture already holds.
resends=$(grep '^resend ' <<<"$verdict" || true)
verdict=$(grep -v '^resend ' <<<"$verdict")
if [[ -n $resends ]]; then
  streams=$(awk '{print "(tcp.stream==" $3 " && tcp.srcport==" $4 ")"}' <<<"$resends" | sort -u | paste -sd'|' | sed 's/|/ || /g')
  same=$("${ts[@]}" -Y "($streams) && tcp.len > 0" -T fields -E separator=$'\t' -e frame.number -e tcp.stream \
    -e tcp.srcport -e tcp.seq -e tcp.payload 2>/dev/null | python3 -c '
import sys
targets = {line.split()[1] for line in sys.argv[1].splitlines()}
seen = {}  # (stream, port) -> [(seq, bytes)] of the segments before
ok = bad = 0
for line in sys.stdin:
    f = line.rstrip("\n").split("\t")
    if len(f) < 5:
        continue
    frame, key, seq, data = f[0], (f[1], f[2]), int(f[3]), bytes.fromhex(f[4].replace(":", ""))
    if frame in targets:
        covered, same = 0, True
        for s0, d0 in seen.get(key, []):
            lo, hi = max(seq, s0), min(seq + len(data), s0 + len(d0))
            if lo < hi:
                covered += 1
                same &= data[lo - seq:hi - seq] == d0[lo - s0:hi - s0]
        if covered and same:
            ok += 1
        else:
            bad += 1
            print(f"frame {frame}: overlaps earlier data with different bytes, or none captured (seq {seq}, len {len(data)})")
    seen.setdefault(key, []).append((seq, data))
print(f"summary {bad} {ok}")
' "$resends")
  read -r _ rbad rok <<<"$(tail -n 1 <<<"$same")"
  bad=$((bad + rbad)); dups=$((dups + rok))
  if ((rbad > 0)); then verdict=$(printf '%s\n%s' "$(sed '$d' <<<"$same")" "$verdict"); fi
fi
if ((bad > 0)); then
  echo "$official"
  echo "nvme-tcp-check-loopback: $bad flagged frame(s) are not loopback retransmissions:"
  sed '$d' <<<"$verdict" | sed -n 1,40p
  exit 1
fi
echo "nvme-tcp-check: $("${ts[@]}" -Y nvme-tcp 2>/dev/null | wc -l) NVMe/TCP PDUs on port $port, none malformed," \
  "digests checked; its only notes were TCP-level: $dups resent segment(s) the receiver D-SACKed as duplicates," \
  "$acks D-SACK ack(s)"
