#!/usr/bin/env python3
"""Report of one tools/bench-stream run: per-tenth throughput and RssAnon.

    stream-report.py OUT_DIR CHUNK_SIZE...

OUT_DIR holds, per chunk size (TAG), the files bench-stream wrote: TAG.backup.marks
and TAG.restore.marks ("tenth bytes realtime-ns"), TAG.{backup,restore}.samples
("realtime-ns RssAnon-KiB RssFile-KiB
process-ticks machine-busy-ticks write_bytes read_bytes wchar"), .peak, .time ("wall user sys maxrss-KiB"),
.end, TAG.gen.txt and TAG.count.txt (bytes and XXH64), TAG.repo-bytes, TAG.chunks.
Prints Markdown. Bars: last tenth >= 0.9x the first, peak RssAnon < 128 MiB, digests equal.
Beside each tenth's MB/s: MB per CPU second of dbbackup, and the cores busy with
dbbackup and with everything else, and what dbbackup passed to write calls (backup:
packs, chunk index, chunk list) or read from storage (restore), MB per second: on a shared machine a tenth can be slow because
something else ran, which the CPU-second figure does not see.
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
    """[(MB/s, max RssAnon MiB, dbbackup cores, other cores)] for tenths 1..10: the
    cores are CPU seconds per second over the tenth, of dbbackup and of everything
    else on the machine (the generator or counter included)."""
    marks = [(int(b), int(t)) for _, b, t in rows(f"{out}/{tag}.{phase}.marks")]
    samples = [tuple(int(x) for x in r) for r in rows(f"{out}/{tag}.{phase}.samples")]
    result = []
    for (b0, t0), (b1, t1) in zip(marks, marks[1:]):
        seconds = (t1 - t0) / 1e9
        rate = (b1 - b0) / 1e6 / seconds
        inside = [s for s in samples if t0 <= s[0] <= t1]
        anon = max(s[1] for s in inside) / 1024 if inside else float("nan")
        own = other = io = float("nan")
        if len(inside) >= 2:
            span = (inside[-1][0] - inside[0][0]) / 1e9
            own = (inside[-1][3] - inside[0][3]) / 100 / span
            other = (inside[-1][4] - inside[0][4]) / 100 / span - own
            if len(inside[0]) >= 7:
                # Backup: bytes dbbackup passed to write calls (wchar; older samples,
                # without it: write_bytes); restore: read from storage (read_bytes).
                column = (7 if len(inside[0]) >= 8 else 5) if phase == "backup" else 6
                io = (inside[-1][column] - inside[0][column]) / 1e6 / span
        # MB per CPU second of dbbackup: what a tenth cost, whatever else ran.
        per_cpu = rate / own if own == own and own > 0 else float("nan")
        result.append((rate, anon, own, other, per_cpu, io))
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
            cpu_ratio = t[-1][4] / t[0][4]
            line += [
                f"{wall:.0f} s, {gen_bytes / 1e6 / wall:.0f} MB/s, CPU {user + sys_:.0f} s",
                f"{first:.0f} / {last:.0f} = {ratio:.2f} {verdict(ratio >= TENTH_BAR)}"
                f" (per CPU s: {cpu_ratio:.2f})",
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
        print(f"Per tenth, `--chunk-size {tag}`: MB/s over the tenth; the highest RssAnon sampled in it,"
              " MiB; cores busy with dbbackup and with everything else (the generator or counter included):")
        print()
        print("| tenth | backup MB/s | MB per CPU s | RssAnon | cores: dbbackup / other | written MB/s |"
              " restore MB/s | MB per CPU s | RssAnon | cores: dbbackup / other | read MB/s |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, (b, r) in enumerate(zip(per["backup"], per["restore"]), 1):
            print(f"| {i} | {b[0]:.0f} | {b[4]:.0f} | {b[1]:.1f} | {b[2]:.2f} / {b[3]:.2f} | {b[5]:.0f} |"
                  f" {r[0]:.0f} | {r[4]:.0f} | {r[1]:.1f} | {r[2]:.2f} / {r[3]:.2f} | {r[5]:.0f} |")


if __name__ == "__main__":
    main()
