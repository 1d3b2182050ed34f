#!/usr/bin/env python3
"""The refactor bar, checked on one tools/bench-house TSV.

    house-bars.py RESULTS.tsv

Per binary (base, new): median over rounds of the ingest time (sum of the nights'
backups) and of the restore time (sum of the restores), with min-max; the highest peak
RSS of any backup and of any restore process over all rounds. Then the bar:
  - median ingest and median restore, new / base <= 1.10
  - peak RSS (backup, restore), new <= base, with a 2% noise tolerance (<= 1.02 x base)
and per night the median backup and restore times, to see where a difference comes from.
Prints Markdown.
"""
import csv
import statistics
import sys
from collections import defaultdict

TIME_BAR = 1.10
RSS_TOLERANCE = 1.02


def main():
    rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
    totals = {b: defaultdict(lambda: defaultdict(float)) for b in ("base", "new")}  # phase -> round -> s
    nights = {b: defaultdict(list) for b in ("base", "new")}                         # (phase, night) -> [s]
    rss = {b: defaultdict(int) for b in ("base", "new")}                              # phase -> KiB
    foreign = {b: defaultdict(float) for b in ("base", "new")}                        # round -> s
    rev = {}
    for r in rows:
        b, phase = r["binary"], r["phase"]
        rev[b] = r["rev"]
        foreign[b][r["round"]] += float(r["foreign_cpu_s"])
        if phase not in ("backup", "restore"):
            continue
        w = float(r["wall_s"])
        totals[b][phase][r["round"]] += w
        nights[b][(phase, int(r["night"]))].append(w)
        rss[b][phase] = max(rss[b][phase], int(r["peak_rss_kb"]))

    def med(b, phase):
        v = list(totals[b][phase].values())
        return statistics.median(v), min(v), max(v), len(v)

    print("| binary | rev | runs | ingest s, median [min–max] | restore s, median [min–max] "
          "| peak RSS KiB, backup / restore | foreign CPU s per run, median |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for b in ("base", "new"):
        mi, lo_i, hi_i, n = med(b, "backup")
        mr, lo_r, hi_r, _ = med(b, "restore")
        print(f"| {b} | {rev[b]} | {n} | {mi:.3f} [{lo_i:.3f}–{hi_i:.3f}] "
              f"| {mr:.3f} [{lo_r:.3f}–{hi_r:.3f}] | {rss[b]['backup']} / {rss[b]['restore']} "
              f"| {statistics.median(foreign[b].values()):.2f} |")
    print()

    print("| bar | base | new | new / base | limit | result |")
    print("|---|---:|---:|---:|---:|---|")
    results = []
    for phase, name in (("backup", "median ingest s"), ("restore", "median restore s")):
        vb, vn = med("base", phase)[0], med("new", phase)[0]
        ratio = vn / vb
        ok = ratio <= TIME_BAR
        results.append(ok)
        print(f"| {name} | {vb:.3f} | {vn:.3f} | {ratio:.3f} | ≤ {TIME_BAR:.2f} | {'PASS' if ok else 'FAIL'} |")
    for phase, name in (("backup", "peak RSS KiB, backup"), ("restore", "peak RSS KiB, restore")):
        vb, vn = rss["base"][phase], rss["new"][phase]
        ratio = vn / vb
        ok = vn <= vb * RSS_TOLERANCE
        results.append(ok)
        print(f"| {name} | {vb} | {vn} | {ratio:.3f} | ≤ 1.00 (1.02 with noise tolerance) "
              f"| {'PASS' if ok else 'FAIL'} |")
    print()
    print(f"verdict: {'PASS' if all(results) else 'FAIL'} "
          f"(time medians new/base ≤ {TIME_BAR:.2f}; peak RSS new ≤ base, 2% tolerance for noise)")
    print()

    n_nights = max(k[1] for k in nights["base"])
    print("Per night, medians over the rounds (s):")
    print()
    print("| night | backup base | backup new | ratio | restore base | restore new | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for k in range(1, n_nights + 1):
        cells = []
        for phase in ("backup", "restore"):
            vb = statistics.median(nights["base"][(phase, k)])
            vn = statistics.median(nights["new"][(phase, k)])
            cells += [f"{vb:.3f}", f"{vn:.3f}", f"{vn / vb:.3f}"]
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
