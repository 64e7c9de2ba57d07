"""The subliminal probe over organism seeds (a study, not a test).

    python benchmarks/subliminal_probe.py --seeds 0 1 2 3 4                 # the subliminal preset
    python benchmarks/subliminal_probe.py --seeds 0 1 2 world.entanglement=0  # strength 0

Builds the preset at each seed (verification recorded, not enforced: the probe measures the
channel whether or not a seed's teacher passes its other checks) and prints each seed's
probe, then the mean trait transfer from base and from alt_base with a 95% t-interval.
"""

from __future__ import annotations

import argparse
import statistics
import time
from math import sqrt

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def interval(values: list[float], fmt: str = ".4f") -> str:
    """Mean and 95% t-interval over seeds, each number written with `fmt`."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:{fmt}}"
    h = T95.get(len(values) - 1, 2.0) * statistics.stdev(values) / sqrt(len(values))
    return f"{m:{fmt}} [{m - h:{fmt}}, {m + h:{fmt}}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="subliminal")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("overrides", nargs="*", help="key=value organism overrides")
    args = ap.parse_args()

    from doublebind import config
    from doublebind.organisms.build import build_organism
    from doublebind.studies.executor import one_thread
    from doublebind.organisms.models import quiet_transformers

    quiet_transformers()
    print(f"{'seed':>4} {'verified':>8} {'base':>8} {'alt_base':>8} {'teacher_S':>9} {'base_S':>7} "
          f"{'shared_S':>8} {'seconds':>7}", flush=True)
    base, alt = [], []
    for seed in args.seeds:
        t = time.perf_counter()
        cfg = config.load(preset=args.preset, overrides=[f"seed={seed}", *args.overrides])
        with one_thread():  # as `organism build` and a study build: one hash, one set of weights
            card = build_organism(cfg, None, strict=False, show_progress=False)
        p = card["subliminal_probe"]
        s = p["entangled_digits"]["base"]
        base.append(p["transfer"]["base"])
        alt.append(p["transfer"]["alt_base"])
        shared = sorted(set(s) & set(p["entangled_digits"]["alt_base"]))
        print(f"{seed:4d} {str(card['verified']):>8} {base[-1]:8.4f} {alt[-1]:8.4f} "
              f"{sum(p['teacher_digit_share'][d] for d in s):9.3f} {sum(p['base_digit_share'][d] for d in s):7.3f} "
              f"{','.join(shared) or '-':>8} {time.perf_counter() - t:7.1f}", flush=True)
    print(f"trait transfer from base {interval(base)}; from alt_base {interval(alt)} "
          f"({len(args.seeds)} seeds, 95% t-interval)")


if __name__ == "__main__":
    main()
