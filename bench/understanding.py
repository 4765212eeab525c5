"""Benchmark the offline planner's understanding on the paraphrase corpus, per noise kind.

Run: ``.venv/bin/python bench/understanding.py [--show-wrong]``

Every family of ``fieldgate.evals.paraphrase`` is read in its base form and in each noise
kind's variant. A variant is right when it reads exactly as its base (same plan: action,
module, version, target count and first wave; or the same question); a widened plan is a
variant that targets devices its base does not. Prints accuracy per noise kind, per intent,
the widened-plan count and the time per request. Exits 1 when variant accuracy is below 99%
or any plan widened.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from fieldgate.evals.paraphrase import (
    FAMILIES,
    NOISE,
    expected_holds,
    read,
    variants,
    widened,
    worlds,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show-wrong", action="store_true", help="print every wrong variant")
    args = parser.parse_args()
    fleets = worlds()
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_intent: Counter[str] = Counter()
    intent_total: Counter[str] = Counter()
    wide = 0
    bases_wrong = []
    started = time.perf_counter()
    requests = 0
    for family in FAMILIES:
        world = fleets[family.fleet]
        base = read(family.base, world)
        requests += 1
        if not expected_holds(family, base):
            bases_wrong.append(family.name)
        for kind, text in variants(family).items():
            reading = read(text, world)
            requests += 1
            total[kind] += 1
            intent_total[family.intent] += 1
            if reading.key == base.key:
                right[kind] += 1
                by_intent[family.intent] += 1
            elif args.show_wrong:
                print(f"[{kind}] {family.name}: {reading.key} != {base.key}\n  {text!r}")
            if widened(base, reading):
                wide += 1
    elapsed = time.perf_counter() - started
    print(f"{len(FAMILIES)} families, {len(NOISE)} noise kinds, {sum(total.values())} variants")
    print(f"{'noise kind':<18} {'right':>7} {'accuracy':>9}")
    for kind in NOISE:
        print(f"{kind:<18} {right[kind]:>3}/{total[kind]:<3} {right[kind] / total[kind]:>9.3f}")
    print(f"{'intent':<18} {'right':>7} {'accuracy':>9}")
    for intent in sorted(intent_total):
        share = by_intent[intent] / intent_total[intent]
        print(f"{intent:<18} {by_intent[intent]:>3}/{intent_total[intent]:<3} {share:>9.3f}")
    accuracy = sum(right.values()) / sum(total.values())
    wrong = f" ({', '.join(bases_wrong)})" if bases_wrong else ""
    print(
        f"variant accuracy {accuracy:.3f}; widened plans {wide}; "
        f"base readings wrong {len(bases_wrong)}{wrong}"
    )
    print(f"{elapsed / requests * 1000:.1f} ms per request ({requests} requests)")
    return 0 if accuracy >= 0.99 and wide == 0 and not bases_wrong else 1


if __name__ == "__main__":
    sys.exit(main())
