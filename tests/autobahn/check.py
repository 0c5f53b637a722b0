#!/usr/bin/env python3
"""Checks an Autobahn|Testsuite report against the rules and the baseline.

usage: check.py INDEX_JSON BASELINE_TSV [--label NAME] [--update] [--subset]

Fails (exit 1) when a case's behavior is not OK, NON-STRICT or INFORMATIONAL,
when its behaviorClose is not OK or INFORMATIONAL, or when any case is worse
than in the baseline (a case id per line: id, behavior, behaviorClose), or
missing from either side. A case better than its baseline is named too but
does not fail: update the baseline to keep the gain. With
--update the baseline is rewritten from the report (the rules still apply).
With --subset only the cases in the report are compared.
"""
import argparse
import collections
import json
import os
import sys

GOOD_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
GOOD_CLOSE = {"OK", "INFORMATIONAL"}
# For telling a regression from an improvement: lower is better.
RANK = {"OK": 0, "NON-STRICT": 1, "INFORMATIONAL": 1}


def rank(result):
    behavior, close = result
    return (RANK.get(behavior, 2), RANK.get(close, 2))


def worse(got, want):
    return any(g > w for g, w in zip(rank(got), rank(want)))


def case_key(case_id):
    return tuple(int(part) for part in case_id.split("."))


def load_baseline(path):
    expected = {}
    if not os.path.exists(path):
        return expected
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            case_id, behavior, close = line.split()
            expected[case_id] = (behavior, close)
    return expected


def write_baseline(path, results):
    with open(path, "w") as f:
        f.write("# Autobahn|Testsuite (wstest 25.10.1, or kosoku) fuzzingclient against chat-server --echo-path,\n")
        f.write("# all cases but 12.* and 13.*. Regenerate: tests/autobahn/run.sh --update-baseline\n")
        f.write("# case\tbehavior\tbehaviorClose\n")
        for case_id in sorted(results, key=case_key):
            behavior, close = results[case_id][:2]
            f.write(f"{case_id}\t{behavior}\t{close}\n")


def detail(index_dir, entry):
    """The case report's own words on what happened (result, close code)."""
    report = entry.get("reportfile")
    text = f"remote close code {entry.get('remoteCloseCode')}"
    if report:
        path = os.path.join(index_dir, report)
        try:
            with open(path) as f:
                case = json.load(f)
            text += f"; {case.get('result', '')} {case.get('resultClose', '')}".rstrip()
            text += f" [{path}]"
        except (OSError, ValueError):
            pass
    return text


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("index")
    parser.add_argument("baseline")
    parser.add_argument("--label", default="autobahn")
    parser.add_argument("--update", action="store_true")
    parser.add_argument("--subset", action="store_true")
    args = parser.parse_args()

    with open(args.index) as f:
        index = json.load(f)
    if len(index) != 1:
        print(f"{args.label}: expected one agent in {args.index}, found {list(index)}")
        return 1
    (agent, cases), = index.items()
    index_dir = os.path.dirname(args.index)
    results = {
        case_id: (entry["behavior"], entry["behaviorClose"], entry)
        for case_id, entry in cases.items()
    }
    if not results:
        print(f"{args.label}: the report has no cases")
        return 1

    failures = []
    for case_id in sorted(results, key=case_key):
        behavior, close, entry = results[case_id]
        if behavior not in GOOD_BEHAVIOR or close not in GOOD_CLOSE:
            failures.append(
                f"  {case_id}: behavior {behavior}, behaviorClose {close} ({detail(index_dir, entry)})"
            )

    behaviors = collections.Counter(r[0] for r in results.values())
    closes = collections.Counter(r[1] for r in results.values())
    fmt = lambda c: ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
    print(f"{args.label}: {len(results)} cases; behavior: {fmt(behaviors)}; behaviorClose: {fmt(closes)}")

    status = 0
    if failures:
        print(f"{args.label}: {len(failures)} case(s) not conforming:")
        print("\n".join(failures))
        status = 1

    if args.update:
        write_baseline(args.baseline, results)
        print(f"{args.label}: baseline written to {args.baseline}")
        return status

    expected = load_baseline(args.baseline)
    if not expected:
        print(f"{args.label}: no baseline at {args.baseline} (make one with --update-baseline)")
        return 1
    changed, improved = [], []
    for case_id in sorted(set(expected) | set(results), key=case_key):
        want = expected.get(case_id)
        got = results.get(case_id)
        if got is None:
            if not args.subset:
                changed.append(f"  {case_id}: expected {want[0]}/{want[1]}, not run")
        elif want is None:
            changed.append(f"  {case_id}: not in the baseline, got {got[0]}/{got[1]}")
        elif want != got[:2]:
            line = f"  {case_id}: expected {want[0]}/{want[1]}, got {got[0]}/{got[1]} ({detail(index_dir, got[2])})"
            (changed if worse(got[:2], want) else improved).append(line)
    if improved:
        print(f"{args.label}: {len(improved)} case(s) better than the baseline {args.baseline}:")
        print("\n".join(improved))
    if changed:
        print(f"{args.label}: {len(changed)} case(s) regressed from the baseline {args.baseline}:")
        print("\n".join(changed))
        status = 1
    if changed or improved:
        print(f"{args.label}: if the change is intended, run tests/autobahn/run.sh --update-baseline")
    else:
        print(f"{args.label}: matches the baseline")
    return status


if __name__ == "__main__":
    sys.exit(main())
