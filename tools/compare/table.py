#!/usr/bin/env python3
"""The README's "Every workload" table from runs of tools/compare/run.sh.

    tools/compare/table.py RUN1 RUN2 RUN3 > table.md

Per workload and size: cvmem's memory (tracking plus forced page tables) against the smallest
other design, and its total conversion time, query p50 and query p99 (medians of the rounds)
against the best other design in every run. On stderr: per figure, the rows within the targets
(memory: never above `bitmap`, within 2x of the smallest or under 16 KiB; times within 1.25x)
in each run, in at least one and in most, then every row that misses in some run; then the same
for issue 21's rule (within 1.25x of the best design whose memory is within 8x of cvmem's, and
within 1.4x of any design).
"""
import json, sys, os
WL = "boot startup tdx-4g swiotlb-churn snp-psc lazy-accept kexec mmio-storm selftest random-flips checkerboard checkerboard-all hostile".split()
dirs = sys.argv[1:]
if not dirs:
    sys.exit(__doc__)

def load(d, w, s):
    p = os.path.join(d, f"{w}-{s}.json")
    if not os.path.exists(p): return None
    rows = json.load(open(p))["report"]["rows"]
    return {r["design"]: r for r in rows if r["status"] == "done"}

def fb(x):
    for unit, div in (("M", 1 << 20), ("K", 1 << 10)):
        if x >= div:
            v = x / div
            s = f"{v:.1f}".rstrip("0").rstrip(".") if v < 100 else f"{v:.0f}"
            return s + unit
    return f"{x} B"

def fns(x):
    for unit, div in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if x >= div:
            v = x / div
            return (f"{v:.3g}") + " " + unit
    return f"{x:.3g} ns"

FIG = [("conv", lambda r: r["spread"]["conversion_total_ns"]["median"]),
       ("p50", lambda r: r["spread"]["query_p50_ns"]["median"]),
       ("p99", lambda r: r["spread"]["query_p99_ns"]["median"])]
counts = {f: [0] * len(dirs) for f, _ in FIG}
counts["mem"] = [0] * len(dirs)
ok_any = {f: 0 for f in counts}; ok_most = {f: 0 for f in counts}
nrows = 0
fails = []
rule = {f: [0] * len(dirs) for f, _ in FIG}
rule_fails = []
print("| workload | guest | cvmem memory (× smallest other) | all conversions (× fastest other) | query p50 (× best) | query p99 (× best) |")
print("|---|---|---|---|---|---|")
for w in WL:
    for s in ("64G", "1T"):
        runs = [load(d, w, s) for d in dirs]
        if any(r is None for r in runs):
            if all(r is None for r in runs): continue
            print(f"missing run for {w} {s}", file=sys.stderr); continue
        nrows += 1
        cells = []
        # memory
        mems = []
        for i, R in enumerate(runs):
            cv = R["cvmem"]["run"]["heap_bytes"] + R["cvmem"]["run"]["table_bytes"]
            others = {k: v["run"]["heap_bytes"] + v["run"]["table_bytes"] for k, v in R.items() if k != "cvmem"}
            best = min(others, key=others.get)
            bm = others.get("bitmap", float("inf"))
            ok = cv <= bm and (cv <= 2 * others[best] or cv < 16384)
            mems.append((cv, others[best], best, ok))
            counts["mem"][i] += ok
        nok = sum(m[3] for m in mems)
        ok_any["mem"] += nok > 0; ok_most["mem"] += nok * 2 > len(dirs)
        if nok < len(dirs): fails.append(f"{w} {s} mem {[ (m[0], m[1], m[2]) for m in mems]}")
        cv, b, bn, _ = mems[0]
        cells.append(f"{fb(cv)} ({cv / b:.2f}x {bn})" if b else f"{fb(cv)} ({bn}: 0 B)")
        for f, get in FIG:
            rs = []
            for i, R in enumerate(runs):
                cv = get(R["cvmem"])
                others = {k: get(v) for k, v in R.items() if k != "cvmem"}
                best = min(others, key=others.get)
                ratio = cv / others[best]
                rs.append((ratio, best))
                counts[f][i] += ratio <= 1.25
                # Issue 21's rule: within 1.25x of the best design whose memory is within 8x of
                # cvmem's, and within 1.4x of any design.
                mem = lambda r: r["run"]["heap_bytes"] + r["run"]["table_bytes"]
                peers = [get(v) for k, v in R.items() if k != "cvmem" and mem(v) <= 8 * mem(R["cvmem"])]
                peer_ok = not peers or cv <= 1.25 * min(peers)
                rule_ok = peer_ok and ratio <= 1.4
                rule[f][i] += rule_ok
                if not rule_ok:
                    peer = min(peers) if peers else float("nan")
                    rule_fails.append(f"{w} {s} {f} run {i + 1}: {cv / peer:.2f}x best peer, {ratio:.2f}x {best}")
            nok = sum(r[0] <= 1.25 for r in rs)
            ok_any[f] += nok > 0; ok_most[f] += nok * 2 > len(dirs)
            if nok < len(dirs): fails.append(f"{w} {s} {f} " + " / ".join(f"{r:.2f}x {n}" for r, n in rs))
            names = {n for _, n in rs}
            if len(names) == 1:
                inner = " / ".join(f"{r:.2f}x" for r, _ in rs) + " " + rs[0][1]
            else:
                inner = " / ".join(f"{r:.2f}x {n}" for r, n in rs)
            cells.append(f"{fns(get(runs[0]['cvmem']))} ({inner})")
        print(f"| {w} | {s} | " + " | ".join(cells) + " |")
print(f"rows {nrows}", file=sys.stderr)
for f in counts:
    print(f"{f}: per run {counts[f]}, in >=1: {ok_any[f]}, in most: {ok_most[f]}", file=sys.stderr)
for x in fails: print("MISS", x, file=sys.stderr)
for f in rule:
    print(f"issue 21 rule, {f}: rows within per run {rule[f]}", file=sys.stderr)
for x in rule_fails: print("RULE MISS", x, file=sys.stderr)
