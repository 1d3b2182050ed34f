#!/usr/bin/env python3
"""Report of one tools/bench-stream run: per-tenth throughput and RssAnon.

    stream-report.py OUT_DIR CHUNK_SIZE...

OUT_DIR holds, per chunk size (TAG), the files bench-stream wrote: TAG.backup.marks
and TAG.restore.marks ("tenth bytes realtime-ns"), TAG.{backup,restore}.samples
("realtime-ns RssAnon-KiB RssFile-KiB"), .peak, .time ("wall user sys maxrss-KiB"),
.end, TAG.gen.txt and TAG.count.txt (bytes and XXH64), TAG.repo-bytes, TAG.chunks.
Prints Markdown. Bars: last tenth >= 0.9x the first, peak RssAnon < 128 MiB, digests equal.
"""
import sys

TENTH_BAR = 0.9
RSS_BAR_MIB = 128


def rows(path):
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def words(path):
    with open(path) as f:
        return f.read().split()


def tenths(out, tag, phase):
    """[(MB/s, max RssAnon MiB in that tenth)] for tenths 1..10."""
    marks = [(int(b), int(t)) for _, b, t in rows(f"{out}/{tag}.{phase}.marks")]
    samples = [(int(t), int(a)) for t, a, _ in rows(f"{out}/{tag}.{phase}.samples")]
    result = []
    for (b0, t0), (b1, t1) in zip(marks, marks[1:]):
        rate = (b1 - b0) / 1e6 / ((t1 - t0) / 1e9)
        inside = [a for t, a in samples if t0 <= t <= t1]
        result.append((rate, max(inside) / 1024 if inside else float("nan")))
    return result, marks


def digest(path):
    w = words(path)
    return int(w[1]), w[3]


def verdict(ok):
    return "PASS" if ok else "**FAIL**"


def main():
    out, tags = sys.argv[1], sys.argv[2:]
    summary = []
    details = []
    for tag in tags:
        chunks, _ = words(f"{out}/{tag}.chunks")
        stored = int(words(f"{out}/{tag}.repo-bytes")[0])
        gen_bytes, gen_digest = digest(f"{out}/{tag}.gen.txt")
        got_bytes, got_digest = digest(f"{out}/{tag}.count.txt")
        line = [f"`--chunk-size {tag}`", f"{int(chunks):,}", f"{stored / 1e9:.2f} ({gen_bytes / stored:.2f}x)"]
        per = {}
        for phase in ("backup", "restore"):
            t, marks = tenths(out, tag, phase)
            per[phase] = t
            wall, user, sys_, _ = (float(x) for x in words(f"{out}/{tag}.{phase}.time"))
            end = int(words(f"{out}/{tag}.{phase}.end")[0])
            peak = dict(zip(*[iter(words(f"{out}/{tag}.{phase}.peak"))] * 2))
            anon = int(peak["peak_rss_anon_kib"]) / 1024
            rfile = int(peak["peak_rss_file_kib"]) / 1024
            first, last = t[0][0], t[-1][0]
            ratio = last / first
            after = (end - marks[-1][1]) / 1e9
            line += [
                f"{wall:.0f} s, {gen_bytes / 1e6 / wall:.0f} MB/s, CPU {user + sys_:.0f} s",
                f"{first:.0f} / {last:.0f} = {ratio:.2f} {verdict(ratio >= TENTH_BAR)}",
                f"{anon:.1f} {verdict(anon < RSS_BAR_MIB)} (file {rfile:.0f})",
            ]
            if phase == "backup":
                line[-3] += f" ({after:.1f} s after the last byte)"
        same = gen_bytes == got_bytes and gen_digest == got_digest
        line.append(f"{verdict(same)} ({got_digest})")
        summary.append(line)
        details.append((tag, per))

    print("| run | chunks | stored GB (ratio) | backup: wall, rate, CPU | backup tenths 1 / 10 MB/s |"
          " backup peak RssAnon MiB | restore: wall, rate, CPU | restore tenths 1 / 10 MB/s |"
          " restore peak RssAnon MiB | restored XXH64 = input's |")
    print("|---|---:|---:|---|---|---|---|---|---|---|")
    for line in summary:
        print("| " + " | ".join(line) + " |")
    for tag, per in details:
        print()
        print(f"Per tenth, `--chunk-size {tag}` (MB/s over the tenth; highest RssAnon sampled in it, MiB):")
        print()
        print("| tenth | backup MB/s | backup RssAnon | restore MB/s | restore RssAnon |")
        print("|---:|---:|---:|---:|---:|")
        for i, (b, r) in enumerate(zip(per["backup"], per["restore"]), 1):
            print(f"| {i} | {b[0]:.0f} | {b[1]:.1f} | {r[0]:.0f} | {r[1]:.1f} |")


if __name__ == "__main__":
    main()
