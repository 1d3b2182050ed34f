#!/usr/bin/env python3
"""Issue 5's bars (and issue 14's restore bar), checked on one run-peers.sh TSV (medians over repetitions).

    peer-bars.py RESULTS.tsv CANDIDATE [STORED_MBS SHA_MULTI_MBS]

Prints a Markdown table: each bar, the candidate's figure, the limit derived from the
peers of the same run, and PASS/FAIL. STORED_MBS (ingest rate of a night that is
mostly stored) and SHA_MULTI_MBS (`openssl speed -evp sha256 -multi N`, 16 KiB blocks)
come from tools/bench-peers, which measures them after the harness.
"""
import csv
import statistics
import sys
from collections import defaultdict


def main():
    tsv, cand = sys.argv[1], sys.argv[2]
    stored = float(sys.argv[3]) if len(sys.argv) > 4 else None
    sha = float(sys.argv[4]) if len(sys.argv) > 4 else None
    rows = list(csv.DictReader(open(tsv), delimiter="\t"))
    ingest = defaultdict(lambda: defaultdict(float))   # tool -> rep -> seconds
    last_repo = defaultdict(dict)                      # tool -> rep -> (night, bytes)
    rss_b = defaultdict(float)
    restore = defaultdict(list)
    rss_r = defaultdict(float)
    for r in rows:
        t, rep = r["tool"], r["rep"]
        if r["phase"] == "backup":
            ingest[t][rep] += float(r["wall_s"])
            n = int(r["night"])
            if n >= last_repo[t].get(rep, (0, 0))[0]:
                last_repo[t][rep] = (n, float(r["repo_bytes"]))
            rss_b[t] = max(rss_b[t], float(r["peak_rss_kb"]) / 1024)
        elif r["phase"] == "restore":
            restore[t].append(float(r["wall_s"]))
            rss_r[t] = max(rss_r[t], float(r["peak_rss_kb"]) / 1024)
            if r["verified"] != "ok":
                print(f"restore of {t} rep {rep} NOT verified: {r['verified']}")
    med = lambda xs: statistics.median(list(xs))
    ing = {t: med(v.values()) for t, v in ingest.items()}
    repo = {t: med(b for _, b in v.values()) / 1e6 for t, v in last_repo.items()}
    rst = {t: med(v) for t, v in restore.items()}
    if cand not in ing:
        sys.exit(f"no rows for {cand} in {tsv}")

    bars = []
    def bar(name, value, limit, unit, ok):
        bars.append((name, value, limit, unit, ok))
    if "borg-zstd3" in ing:
        bar("ingest, all nights ≤ 0.4× borg zstd,3", ing[cand], 0.4 * ing["borg-zstd3"], "s",
            ing[cand] <= 0.4 * ing["borg-zstd3"])
    if "restic" in ing:
        bar("ingest, all nights ≤ 0.3× restic", ing[cand], 0.3 * ing["restic"], "s",
            ing[cand] <= 0.3 * ing["restic"])
    if "borg-zstd3" in rst and cand in rst:
        bar("restore of the last night ≤ 0.5× borg zstd,3", rst[cand], 0.5 * rst["borg-zstd3"], "s",
            rst[cand] <= 0.5 * rst["borg-zstd3"])
        # Issue 14's, in each run of the harness on its own.
        bar(f"restore of the last night ≤ 0.35× borg zstd,3 (ratio {rst[cand] / rst['borg-zstd3']:.3f})",
            rst[cand], 0.35 * rst["borg-zstd3"], "s", rst[cand] <= 0.35 * rst["borg-zstd3"])
    peers = [repo[t] for t in ("restic", "borg-zstd3") if t in repo]
    if peers:
        bar("final repository ≤ min(restic, borg zstd,3)", repo[cand], min(peers), "MB",
            repo[cand] <= min(peers))
    bar("peak RSS, backup < 128 MiB", rss_b[cand], 128, "MiB", rss_b[cand] < 128)
    if cand in rss_r:
        bar("peak RSS, restore < 128 MiB", rss_r[cand], 128, "MiB", rss_r[cand] < 128)
    if stored is not None and sha is not None:
        bar("mostly-stored night ≥ 0.6× SHA-256 on all cores", stored, 0.6 * sha, "MB/s",
            stored >= 0.6 * sha)

    print(f"\n## Issue 5 bars for {cand} (medians of this run)\n")
    print("| bar | ours | limit | unit | result |")
    print("|---|---:|---:|---|---|")
    for name, v, lim, unit, ok in bars:
        print(f"| {name} | {v:.2f} | {lim:.2f} | {unit} | {'PASS' if ok else '**FAIL**'} |")
    print("\nPeers in this run: " + ", ".join(
        f"{t}: ingest {ing[t]:.2f} s, restore {rst.get(t, float('nan')):.2f} s, repo {repo[t]:.1f} MB"
        for t in ing if t != cand))


if __name__ == "__main__":
    main()
