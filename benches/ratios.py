#!/usr/bin/env python3
"""Tables from the `stack` bench's criterion baselines (one per round).

Usage: python3 benches/ratios.py r1 r2 r3   (baselines saved with
`cargo bench -p backstop-benches --bench stack -- --save-baseline rN`).

For each runtime group (ct, mt1, mt) and configuration: the median over the
rounds of ns per call, of ns added over the bare service in the same round,
and of the ratio to tower's nearest equivalent in the same round.
"""
import json
import os
import statistics
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "criterion")
GROUPS = [
    ("ct", "current-thread runtime, 1 caller"),
    ("mt1", "2-thread runtime, 1 caller task"),
    ("mt", "2-thread runtime, 64 caller tasks (wall time / calls)"),
]
ROWS = [
    ("backstop sla", "tower timeout"),
    ("backstop attempt-timeout", "tower timeout"),
    ("backstop shield sync_hook", None),
    # `LoadShed` neither bounds nor counts waiters: no equivalent to compare.
    ("backstop admission", None),
    ("backstop rate-limit", "tower buffer+rate-limit"),
    ("backstop concurrency", "tower concurrency"),
    ("backstop retry", "tower retry tps-budget"),
    ("backstop full stack", "tower full stack"),
    ("tower timeout", None),
    ("tower load-shed", None),
    ("tower buffer+rate-limit", None),
    ("tower concurrency", None),
    ("tower retry tps-budget", None),
    ("tower full stack", None),
]


def ns(group, name, baseline):
    path = os.path.join(ROOT, group, name, baseline, "estimates.json")
    with open(path) as f:
        e = json.load(f)
    return (e.get("slope") or e["mean"])["point_estimate"]


def main(baselines):
    for group, title in GROUPS:
        print(f"\n### `{group}`: {title}; median of {len(baselines)} rounds\n")
        bare = [ns(group, "bare", b) for b in baselines]
        print(f"bare `service_fn`: {statistics.median(bare):.1f} ns/call\n")
        print("| configuration | ns/call | added over bare | vs tower's equivalent |")
        print("|---|---:|---:|---:|")
        for name, twin in ROWS:
            t = [ns(group, name, b) for b in baselines]
            added = [x - y for x, y in zip(t, bare)]
            vs = "-"
            if twin:
                tw = [ns(group, twin, b) for b in baselines]
                r = statistics.median([x / y for x, y in zip(t, tw)])
                vs = f"{r:.2f}x {twin}"
            print(
                f"| {name} | {statistics.median(t):.0f} | "
                f"+{statistics.median(added):.0f} ns | {vs} |"
            )


if __name__ == "__main__":
    main(sys.argv[1:] or ["new"])
