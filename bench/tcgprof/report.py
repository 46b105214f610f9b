#!/usr/bin/env python3
"""bench/tcgprof/report.py: the two host-side halves of bench/tcg-profile.sh.

  report.py resolve OUT   (run by vm.sh -H while the guest waits) the guest's kallsyms from its console into
                          OUT/ksyms.txt, and the kernel functions of EVENTS resolved into OUT/events.txt, which
                          the plugin then loads (bench/tcgprof/tbprof.c)
  report.py report OUT    the Markdown report of OUT's profile windows, one per point and pair

Per point and pair: instructions and sampled time per I/O on each vCPU (CPU 0: the targets and all loopback
receive processing; CPU 1: the initiators), split by symbol (kernel functions by kallsyms; holdfast's own by
its symbol table; other programs by file), the events per I/O, and at QD1 under the kernel host the median
timeline of one I/O. Where one point ran with both targets under one initiator (or both initiators against one
target), the two are set side by side and the largest differences listed.
"""
import base64, bisect, collections, gzip, os, re, statistics, subprocess, sys

# Kernel functions whose entries the plugin logs: the steps of an I/O on either side and what they cost the
# CPUs under emulation (inter-processor interrupts, wake-ups, context switches, contended locks).
EVENTS = """
__x64_sys_io_submit __x64_sys_io_getevents aio_complete_rw
nvme_tcp_queue_rq nvme_tcp_try_send nvme_tcp_io_work nvme_tcp_data_ready nvme_tcp_recv_skb nvme_complete_rq
nvmet_tcp_data_ready nvmet_tcp_io_work nvmet_tcp_queue_response nvmet_bdev_execute_rw
__x64_sys_recvfrom __x64_sys_recvmsg __x64_sys_sendmsg __x64_sys_writev __x64_sys_epoll_wait
tcp_sendmsg tcp_recvmsg do_tcp_sendpages loopback_xmit net_rx_action tcp_v4_rcv sock_def_readable
native_send_call_func_single_ipi native_smp_send_reschedule sysvec_call_function_single sysvec_reschedule_ipi
try_to_wake_up __schedule default_idle_call native_queued_spin_lock_slowpath
__x64_sys_clock_gettime __x64_sys_sched_yield read_hpet
""".split()

LEGEND = {
    "native_send_call_func_single_ipi": "function-call IPIs sent (loopback RPS hand-offs, remote wake-ups)",
    "native_smp_send_reschedule": "reschedule IPIs sent",
    "sysvec_call_function_single": "function-call IPIs taken",
    "sysvec_reschedule_ipi": "reschedule IPIs taken",
    "__schedule": "scheduler runs (context switches)",
    "native_queued_spin_lock_slowpath": "contended spinlock acquisitions",
    "default_idle_call": "entries to idle",
    "nvme_tcp_data_ready": "segments delivered to the kernel host's socket",
    "nvme_tcp_io_work": "kernel host queue worker runs",
    "nvmet_tcp_io_work": "kernel target queue worker runs",
    "loopback_xmit": "segments sent",
    "__x64_sys_clock_gettime": "clock reads that are system calls",
    "read_hpet": "HPET reads (an emulated device register, under QEMU's global lock)",
}

USER_BASE = 0x555555554000  # where a PIE loads with the guest's address randomisation off


def console(out):
    path = os.environ.get("INTEROP_CONSOLE") or os.path.join(out, "console.log")
    with open(path, errors="replace") as f:
        return [l.rstrip("\r\n") for l in f]


def resolve(out):
    lines = console(out)
    a, b = lines.index("TBPROF-KSYMS-BEGIN"), lines.index("TBPROF-KSYMS-END")
    text = gzip.decompress(base64.b64decode("".join(lines[a + 1:b]))).decode()
    with open(os.path.join(out, "ksyms.txt"), "w") as f:
        f.write(text)
    first = {}
    for l in text.splitlines():
        p = l.split()
        if len(p) >= 3 and p[2] not in first:
            first[p[2]] = p[0]
    with open(os.path.join(out, "events.tmp"), "w") as f:
        for name in EVENTS:
            if name in first:
                f.write("%s %s\n" % (first[name], name))
    os.replace(os.path.join(out, "events.tmp"), os.path.join(out, "events.txt"))


class Symbols:
    def __init__(self, out, lines):
        self.k = []
        for l in open(os.path.join(out, "ksyms.txt")):
            p = l.split()
            self.k.append((int(p[0], 16), p[2] + (" " + p[3] if len(p) > 3 else "")))
        self.k.sort()
        self.ka = [a for a, _ in self.k]
        self.u = []
        nm = subprocess.run(["nm", "-C", "--defined-only", os.path.join(out, "holdfast")], capture_output=True, text=True)
        for l in nm.stdout.splitlines():
            p = l.split(" ", 2)
            if len(p) == 3 and p[1] in "tTwW":
                self.u.append((int(p[0], 16) + USER_BASE, re.sub(r"::h[0-9a-f]{16}$", "", p[2])))
        self.u.sort()
        self.ua = [a for a, _ in self.u]
        self.maps = []
        for l in lines:
            if l.startswith("TBPROF-MAPS|"):
                m = l[12:].split()
                lo, hi = (int(x, 16) for x in m[0].split("-"))
                if "x" in m[1]:
                    self.maps.append((lo, hi, m[5] if len(m) > 5 else "anon"))

    def name(self, a):
        if a >= 0xFFFF800000000000:
            i = bisect.bisect_right(self.ka, a) - 1
            return self.k[i][1] if i >= 0 else "kernel ?"
        for lo, hi, path in self.maps:
            if lo <= a < hi:
                if path.endswith("/holdfast"):
                    i = bisect.bisect_right(self.ua, a) - 1
                    return "user: " + (self.u[i][1][:100] if i >= 0 else "holdfast ?")
                return "user: " + os.path.basename(path)
        return "user: another program"


def load(out):
    lines = console(out)
    syms = Symbols(out, lines)
    secs = float(os.environ.get("TP_SECONDS", "5"))
    events = [l.split()[1] for l in open(os.path.join(out, "events.txt"))]
    points, iops = [], collections.defaultdict(list)
    for l in lines:
        if l.startswith("TBPROF-POINT|"):
            _, n, ini, tgt, label = l.split("|")
            points.append((int(n), ini, tgt, label))
        elif l.startswith("SBS|"):
            _, ini, tgt, label, i, *_ = l.split("|")
            iops[(ini, tgt, label)].append(int(i))
    seen = collections.Counter()
    windows = []
    for n, ini, tgt, label in points:
        k = (ini, tgt, label)
        rate = iops[k][seen[k]] if seen[k] < len(iops[k]) else 0
        seen[k] += 1
        path = os.path.join(out, "tbprof.%d" % n)
        if not os.path.exists(path) or not rate:
            continue
        w = {"key": k, "iops": rate, "ios": rate * secs, "insns": [collections.Counter(), collections.Counter()],
             "samples": [collections.Counter(), collections.Counter()], "events": collections.Counter(), "log": []}
        for l in open(path):
            a, ni, e0, e1, s0, s1 = (int(x, 16) if i == 0 else int(x) for i, x in enumerate(l.split()))
            s = syms.name(a)
            for cpu, e, smp in ((0, e0, s0), (1, e1, s1)):
                if e:
                    w["insns"][cpu][s] += e * ni
                if smp:
                    w["samples"][cpu][s] += smp
        evpath = os.path.join(out, "tbprof.ev.%d" % n)
        if os.path.exists(evpath):
            for l in open(evpath):
                t, cpu, i = (int(x) for x in l.split())
                w["events"][(events[i], cpu)] += 1
                w["log"].append((t, cpu, events[i]))
        windows.append(w)
    return windows, float(os.environ.get("TBPROF_SAMPLE_US", "500"))


def per_io(counter, ios, scale=1.0):
    return {k: v * scale / ios for k, v in counter.items()}


def merge(ws, sample_us):
    """The rounds of one point and pair, as one: totals over their I/Os."""
    ios = sum(w["ios"] for w in ws)
    m = {"iops": statistics.median(w["iops"] for w in ws), "rounds": len(ws)}
    m["insns"] = [per_io(sum((w["insns"][c] for w in ws), collections.Counter()), ios) for c in (0, 1)]
    m["time"] = [per_io(sum((w["samples"][c] for w in ws), collections.Counter()), ios, sample_us) for c in (0, 1)]
    m["events"] = per_io(sum((w["events"] for w in ws), collections.Counter()), ios)
    m["log"] = ws[0]["log"]
    return m


def timeline(log):
    """QD1 under the kernel host: each I/O starts at fio's io_submit on CPU 1; the median time of each step's
    first occurrence after it, for steps seen in most I/Os."""
    log = sorted(log)
    cycles, cur = [], None
    for t, cpu, name in log:
        if name == "__x64_sys_io_submit" and cpu == 1:
            if cur:
                cycles.append(cur)
            cur = {"t0": t}
        elif cur is not None:
            cur.setdefault((name, cpu), t - cur["t0"])
    if len(cycles) < 10:
        return None, {}
    lens = [b["t0"] - a["t0"] for a, b in zip(cycles, cycles[1:])]
    keys = collections.Counter(k for c in cycles for k in c if k != "t0")
    steps = {k: statistics.median(c[k] for c in cycles if k in c) / 1e3 for k, n in keys.items() if n >= 0.9 * len(cycles)}
    return statistics.median(lens) / 1e3, steps


def fmt_top(d, top):
    return sorted(d.items(), key=lambda x: -x[1])[:top]


def report(out):
    windows, sample_us = load(out)
    top = int(os.environ.get("TP_TOP", "12"))
    groups = collections.OrderedDict()
    for w in windows:
        groups.setdefault(w["key"], []).append(w)
    merged = {k: merge(v, sample_us) for k, v in groups.items()}
    labels = list(collections.OrderedDict((k[2], 1) for k in merged))
    print("## Profile of the side-by-side VM (`bench/tcg-profile.sh`)")
    print()
    print("Counted by a QEMU plugin (bench/tcgprof/tbprof.c) over each point's window, fio's or `holdfast bench`'s")
    print("start and exit included; CPU 0 runs the targets and all loopback receive processing, CPU 1 the initiator.")
    if any(m["insns"][c] for m in merged.values() for c in (0, 1)):
        print("Instructions are executed guest instructions; time is sampled every %.0f us per vCPU (idle shows as" % sample_us)
        print("the idle loop); both per I/O. The plugin's counting slows the guest by about a fifth, and so shifts its")
        print("timing: IOPS here are below a plain run's.")
    else:
        print("Events only (TP_COUNT=0): the kernel functions' entries per I/O, and the guest's timing as in a plain run.")
    for label in labels:
        here = {k: v for k, v in merged.items() if k[2] == label}
        print()
        print("### %s" % label)
        print()
        names = sorted(here, key=lambda k: (k[0] != "kernel", k[1] != "kernel"))
        print("| per I/O | " + " | ".join("%s host, %s target" % (k[0], k[1]) for k in names) + " |")
        print("|---|" + "---|" * len(names))
        print("| IOPS (median of %s) | " % "/".join(str(here[k]["rounds"]) for k in names) + " | ".join("%.0f" % here[k]["iops"] for k in names) + " |")
        counted = any(here[k]["insns"][c] for k in names for c in (0, 1))
        for c in (0, 1) if counted else ():
            print("| CPU %d instructions (kernel + user) | " % c + " | ".join(
                "%.0f (%.0f + %.0f)" % (sum(here[k]["insns"][c].values()),
                                        sum(v for s, v in here[k]["insns"][c].items() if not user(s)),
                                        sum(v for s, v in here[k]["insns"][c].items() if user(s))) for k in names) + " |")
            print("| CPU %d time, us (idle) | " % c + " | ".join(
                "%.1f (%.1f)" % (sum(here[k]["time"][c].values()), sum(v for s, v in here[k]["time"][c].items() if is_idle(s)))
                for k in names) + " |")
        evkeys = sorted(set(e for k in names for e in here[k]["events"]), key=lambda e: (e[1], e[0]))
        for e in evkeys:
            if max(here[k]["events"].get(e, 0) for k in names) < 0.01:
                continue
            desc = LEGEND.get(e[0], "")
            print("| CPU %d `%s`%s | " % (e[1], e[0], " (" + desc + ")" if desc else "") + " | ".join(
                "%.3f" % here[k]["events"].get(e, 0) for k in names) + " |")
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if counted and (a[0] == b[0] or a[1] == b[1])]
        for a, b in pairs:
            print()
            print("Largest differences, %s host with %s target -> %s host with %s target, per I/O:" % (a[0], a[1], b[0], b[1]))
            print()
            for what, unit in (("time", "us"), ("insns", "instructions")):
                for c in (0, 1):
                    da, db = here[a][what][c], here[b][what][c]
                    diff = {s: db.get(s, 0) - da.get(s, 0) for s in set(da) | set(db)}
                    items = sorted(diff.items(), key=lambda x: -abs(x[1]))[:top]
                    fmt = "%+.1f" if what == "time" else "%+.0f"
                    print("- CPU %d %s (%s): " % (c, what == "time" and "time" or "instructions", unit) + "; ".join(
                        ("%s %s (%s -> %s)" % (fmt % v, s, (fmt % da.get(s, 0)).lstrip("+"), (fmt % db.get(s, 0)).lstrip("+"))) for s, v in items))
        for k in names:
            if k[0] == "kernel" and label.split()[-1] == "1":
                cyc, steps = timeline(here[k]["log"])
                if cyc is None:
                    continue
                print()
                print("One I/O, kernel host with %s target (median cycle %.1f us): " % (k[1], cyc) + "; ".join(
                    "%.1f CPU%d %s" % (t, s[1], s[0]) for s, t in sorted(steps.items(), key=lambda x: x[1])))
        for k in names if counted else ():
            print()
            print("Top, %s host with %s target, per I/O: " % (k[0], k[1]) + "; ".join(
                "CPU %d time: " % c + ", ".join("%.1f us %s" % (v, s) for s, v in fmt_top(here[k]["time"][c], top // 2))
                for c in (0, 1)))


def user(sym):
    return sym.startswith("user: ")


def is_idle(sym):
    return sym in ("native_safe_halt", "default_idle", "default_idle_call", "arch_cpu_idle", "do_idle")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("resolve", "report"):
        sys.exit(__doc__)
    (resolve if sys.argv[1] == "resolve" else report)(sys.argv[2])
