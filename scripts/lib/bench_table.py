#!/usr/bin/env python3
"""bench_table.py TSV: the medians of a scripts/bench.sh run, one row per metric, and Tessera's
lead over the best peer (MooseFS, JuiceFS, GlusterFS, SeaweedFS; local and bindfs are
references, not peers): >1 means Tessera is ahead, whichever way the metric points."""
import collections, statistics, sys

PEERS = ["mfs", "juicefs", "gluster", "seaweedfs"]
# Lower is better for times, disk growth and memory; higher for rates.
def lower_is_better(metric, unit):
    return unit in ("s", "x", "MiB")

rows = collections.defaultdict(list)
units, labels, metrics = {}, [], []
for line in open(sys.argv[1]):
    p = line.rstrip("\n").split("\t")
    if len(p) < 5 or p[1].startswith("_"):
        continue
    _, label, metric, value, unit = p[:5]
    if label not in labels:
        labels.append(label)
    if metric not in metrics:
        metrics.append(metric)
    units[metric] = unit
    try:
        rows[(label, metric)].append(float(value))
    except ValueError:
        pass

def fmt(x):
    return "%.3f" % x if abs(x) < 10 else ("%.1f" % x if abs(x) < 100 else "%.0f" % x)

def med(label, metric):
    v = rows.get((label, metric))
    return statistics.median(v) if v else None

print("| metric | unit | " + " | ".join(labels) + " | Tessera's lead over the best peer |")
print("|---|---|" + "---|" * len(labels) + "---|")
for m in metrics:
    cells = []
    for l in labels:
        v = rows.get((l, m), [])
        cells.append("%s (n=%d)" % (fmt(statistics.median(v)), len(v)) if v else "NA")
    lead = "–"
    t = med("tessera", m)
    peers = [(med(p, m), p) for p in PEERS if med(p, m) is not None]
    if t is not None and peers and units[m] != "entries":
        low = lower_is_better(m, units[m])
        best, who = (min if low else max)(peers)
        if low:
            lead = "%.2f× (%s)" % (best / t, who) if t > 0 else "∞ (%s)" % who
        else:
            lead = "%.2f× (%s)" % (t / best, who) if best > 0 else "∞ (%s)" % who
    print("| %s | %s | %s | %s |" % (m, units[m], " | ".join(cells), lead))
