#!/usr/bin/env python3
"""Reference model of the exposure ledger's results (contract §3, §4, §8).

Written from the contract alone, independently of allot's code: the hash
(§4.1), the layout (§4.2), phases and moved ranges (§3), and per-phase
results (§8). It plays one scenario (a set of units assigned after each of
a sequence of reweightings) and writes what allot must answer to
tests/fixtures/ledger_reference.json, with the sample-ratio check computed
by scipy.stats.chisquare.

The fixture is committed; the integration test `exposures::*_matches_the_reference`
replays the scenario through the server and compares. Regenerate with:

    pip install scipy==1.17.1 && python3 tests/reference/ledger.py
"""

import hashlib
import json
import math
import os

import scipy
from scipy.stats import chisquare

BUCKETS = 10_000


def bucket(*parts):
    digest = hashlib.sha256(":".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def targets(treatments, coverage):
    total = math.floor(coverage * BUCKETS + 0.5)
    active = [(i, w) for i, (_, w) in enumerate(treatments) if w > 0]
    out = [0] * len(treatments)
    if not active:
        return out
    W = 0.0
    for _, w in active:
        W += w
    exact = [(i, total * w / W) for i, w in active]
    for i, e in exact:
        out[i] = math.floor(e)
    left = total - sum(out)
    # Largest fractional parts first, ties to the earlier treatment.
    order = sorted(exact, key=lambda ie: (-(ie[1] - math.floor(ie[1])), ie[0]))
    for i, _ in order[:left]:
        out[i] += 1
    return out


def layout(previous, treatments, coverage):
    """previous: a list of 10 000 owners (name or None)."""
    owners = list(previous)
    names = [n for n, _ in treatments]
    goal = dict(zip(names, targets(treatments, coverage)))
    # Release: unlisted treatments give up everything; others their highest buckets.
    for b in range(BUCKETS):
        if owners[b] is not None and owners[b] not in goal:
            owners[b] = None
    for name in names:
        held = [b for b in range(BUCKETS) if owners[b] == name]
        for b in sorted(held, reverse=True)[: max(0, len(held) - goal[name])]:
            owners[b] = None
    # Grow: in list order, the lowest free buckets.
    for name in names:
        need = goal[name] - sum(1 for o in owners if o == name)
        for b in range(BUCKETS):
            if need <= 0:
                break
            if owners[b] is None:
                owners[b] = name
                need -= 1
    return owners


def ranges(owners):
    out = []
    for b, o in enumerate(owners):
        if o is None:
            continue
        if out and out[-1]["treatment"] == o and out[-1]["end"] == b:
            out[-1]["end"] = b + 1
        else:
            out.append({"treatment": o, "start": b, "end": b + 1})
    return sorted(out, key=lambda r: r["start"])


def moved(before, after):
    out = []
    count = 0
    for b in range(BUCKETS):
        if before[b] == after[b]:
            continue
        count += 1
        if out and out[-1]["end"] == b and out[-1]["from"] == before[b] and out[-1]["to"] == after[b]:
            out[-1]["end"] = b + 1
        else:
            out.append({"start": b, "end": b + 1, "from": before[b], "to": after[b]})
    return {"buckets": count, "share": count / BUCKETS, "ranges": out}


KEY = "ledger-reference"
# Units of two orgs; each phase assigns a growing prefix of them, some twice.
UNITS = [("acme", f"pr-{i}") for i in range(700)] + [("globex", f"pr-{i}") for i in range(300)]
PHASES = [
    # (treatments with weights, coverage, units answered in the phase)
    ([("control", 1), ("treatment", 1)], 1.0, 600),
    ([("control", 1), ("treatment", 1), ("perf", 1)], 1.0, 800),
    ([("control", 2), ("treatment", 1), ("perf", 1)], 1.0, 1000),
    ([("control", 2), ("treatment", 1), ("perf", 1)], 0.5, 1000),
]


def main():
    owners = [None] * BUCKETS
    last_treatment = {}  # unit -> its treatment in the latest phase it was recorded in
    phases = []
    for n, (treatments, coverage, count) in enumerate(PHASES, start=1):
        before = owners
        owners = layout(before, treatments, coverage)
        per_arm = {name: 0 for name, _ in treatments}
        not_in_coverage = 0
        moved_units = 0
        seen = {}
        for org, unit in UNITS[:count]:
            t = owners[bucket(KEY, org, unit)]
            if t is None:
                not_in_coverage += 1
                continue
            seen[(org, unit)] = t
        for u, t in seen.items():
            per_arm[t] += 1
            if u in last_treatment and last_treatment[u] != t:
                moved_units += 1
        last_treatment.update(seen)
        buckets = {name: sum(1 for o in owners if o == name) for name, _ in treatments}
        allocated = sum(buckets.values())
        units = sum(per_arm.values())
        cells = [name for name, _ in treatments if buckets[name] > 0]
        observed = [per_arm[name] for name in cells]
        expected = [buckets[name] / allocated * sum(observed) for name in cells]
        chi2, p = chisquare(observed, expected)
        phases.append({
            "phase": n,
            "treatments": [{"name": name, "weight": w} for name, w in treatments],
            "coverage": coverage,
            "units_answered": count,
            "layout": ranges(owners),
            "moved": moved(before, owners) if n > 1 else {"buckets": 0, "share": 0.0, "ranges": []},
            "results": {
                "units": units,
                "treatments": [
                    {"name": name, "buckets": buckets[name], "expected_share": buckets[name] / allocated,
                     "units": per_arm[name], "observed_share": per_arm[name] / units if units else 0.0}
                    for name, _ in treatments
                ],
                "not_in_coverage": not_in_coverage,
                "moved_units": moved_units,
                "srm": {"chi_square": float(chi2), "df": len(cells) - 1, "p_value": float(p)},
            },
        })
    # Count vectors for the statistic alone, skewed ones included.
    cases = []
    for shares, observed in [
        ([0.5, 0.5], [5012, 4988]),
        ([0.5, 0.5], [5300, 4700]),
        ([0.25, 0.25, 0.5], [260, 240, 500]),
        ([0.2, 0.3, 0.5], [1000, 1000, 1000]),
        ([0.3334, 0.3333, 0.3333], [10, 30, 60]),
        ([0.5, 0.5], [50, 50]),
    ]:
        total = sum(observed)
        chi2, p = chisquare(observed, [s * total for s in shares])
        cases.append({"shares": shares, "observed": observed, "chi_square": float(chi2),
                      "df": len(shares) - 1, "p_value": float(p)})
    out = {
        "source": "tests/reference/ledger.py, with scipy " + scipy.__version__ + " (scipy.stats.chisquare)",
        "experiment": KEY,
        "units": [[o, u] for o, u in UNITS],
        "phases": phases,
        "chisquare": cases,
    }
    path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "ledger_reference.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
