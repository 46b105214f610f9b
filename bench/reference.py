#!/usr/bin/env python3
"""Compare a bench/run.sh table with the polled userspace reference figures quoted in issue 5 (SPDK on a
machine like ours: 2 cores, target on core 0, initiator on core 1, RAM namespace with 4 KiB blocks, loopback).
Machines differ, so throughput is compared as a ratio to each run's own iperf3 reference (one stream, 128 KiB
writes): theirs 34.7 Gbit/s. QD1 latency is compared directly (mean, µs).

Usage: reference.py IPERF_GBPS < table rows ("| point | IOPS | MB/s | mean µs | ..." lines)."""
import sys

REF_IPERF_GBPS = 34.7
# point label in our table -> (reference value, unit)
REFERENCE = {
    "4 KiB randread QD32": (924e3, "iops"),
    "4 KiB randwrite QD32": (885e3, "iops"),
    "128 KiB read QD16": (7.6e9, "bytes"),
    "128 KiB write QD16": (5.9e9, "bytes"),
    "4 KiB randread QD1": (9.6, "mean_us"),
}


def main():
    ours_iperf = float(sys.argv[1])
    rows = {}
    for line in sys.stdin:
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) >= 8 and c[1].isdigit():
            rows[c[0]] = c
    print("| point | reference | reference / its iperf3 | holdfast | holdfast / its iperf3 | holdfast ÷ reference |")
    print("|---|---|---|---|---|---|")
    for label, (value, unit) in REFERENCE.items():
        if label not in rows:
            continue
        c = rows[label]
        if unit == "mean_us":
            ours = float(c[3])
            print("| %s (mean latency) | %.1f µs | | %.1f µs | | %.2f |" % (label, value, ours, value / ours))
            continue
        bs = 4096 if label.startswith("4 KiB") else 131072
        ref_gbps = (value * bs if unit == "iops" else value) * 8 / 1e9
        our_gbps = float(c[2]) * 8 / 1000
        ref_r, our_r = ref_gbps / REF_IPERF_GBPS, our_gbps / ours_iperf
        ref_txt = "%.0f K IOPS" % (value / 1e3) if unit == "iops" else "%.1f GB/s" % (value / 1e9)
        our_txt = "%s K IOPS" % (int(c[1]) // 1000) if unit == "iops" else "%.2f GB/s" % (float(c[2]) / 1000)
        print("| %s | %s | %.3f | %s | %.3f | %.2f |" % (label, ref_txt, ref_r, our_txt, our_r, our_r / ref_r))


if __name__ == "__main__":
    main()
