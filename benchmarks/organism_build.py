"""Cold build times of the organism presets against their targets.

    python benchmarks/organism_build.py [quick default]

Each preset is built from an empty cache in this process; the table gives seconds per
stage and the ratio of the total to its target (quick <= 60 s, default and every scenario
preset <= 300 s on 2 cores; the subliminal preset's time includes its probe).
"""

from __future__ import annotations

import os
import tempfile
import time

TARGETS = {"quick": 60.0, "default": 300.0, "collusion": 300.0, "beacon": 300.0, "disposition": 300.0,
           "reason1": 300.0, "reason3": 300.0, "subliminal": 300.0}


def main(presets: list[str]) -> None:
    import torch

    from doublebind import config
    from doublebind.organisms.build import build_organism
    from doublebind.organisms.models import quiet_transformers

    quiet_transformers()
    print(f"torch threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}")
    print(f"{'preset':8} {'total_s':>8} {'target_s':>8} {'ratio':>6} {'verified':>8}  stages")
    for name in presets:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["DOUBLEBIND_CACHE"] = cache
            t = time.perf_counter()
            card = build_organism(config.load(preset=name), None, strict=False, show_progress=False)
            total = time.perf_counter() - t
        stages = " ".join(f"{k}={v}" for k, v in card["timing"].items() if k != "total_s")
        print(f"{name:8} {total:8.1f} {TARGETS[name]:8.0f} {total / TARGETS[name]:6.2f} "
              f"{str(card['verified']):>8}  {stages}", flush=True)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("presets", nargs="*", default=["quick", "default"], choices=sorted(TARGETS), metavar="PRESET",
                    help=f"presets to build cold (default: quick default; any of {', '.join(sorted(TARGETS))})")
    main(ap.parse_args().presets)
