#!/usr/bin/env python3
"""CPU time per thread name of a running process over a window, read from
/proc/PID/task/*/stat (utime + stime), and how busy the whole machine was.
Used to split a benchmark's 2 cores between the request threads, SQLite's
connections, the audit writer, the nonce thread and the load generator:

    LICENSEGATE_BENCH_RATE=9000 cargo bench --bench consent -- 20000 64 retrievals &
    bench/threadcpu.py $(pgrep -f 'deps/consent-' | head -1) 15 6

waits 15 s (the closed loop and the warm-up), then measures for 6 s of the
open loop. Threads that ended during the window are not counted."""
import collections
import os
import sys
import time


def threads(pid):
    seen = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seen[tid] = (name, int(fields[11]) + int(fields[12]))
    return seen


def machine():
    values = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(values), values[3] + values[4]


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: bench/threadcpu.py PID DELAY_SECONDS WINDOW_SECONDS")
    pid, delay, window = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    tick = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    time.sleep(delay)
    before, m_before, t0 = threads(pid), machine(), time.time()
    time.sleep(window)
    after, m_after = threads(pid), machine()
    elapsed = time.time() - t0
    total = collections.Counter()
    for tid, (name, ticks) in after.items():
        total[name] += (ticks - before.get(tid, (name, 0))[1]) / tick
    busy = 1 - (m_after[1] - m_before[1]) / max(1, m_after[0] - m_before[0])
    print(f"window {elapsed:.1f} s, machine busy {busy * 100:.1f}%")
    for name, seconds in total.most_common(12):
        share = seconds / elapsed / cores * 100
        print(f"  {name:20s} {seconds:6.2f} CPU-s  {share:5.1f}% of the machine")


if __name__ == "__main__":
    main()
