"""Does this machine build the same `base` as the machine that built a reference organism?

    python benchmarks/build_portability.py [--preset default] [--card docs/results/organisms/default-o0/organism.json]
    ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE python benchmarks/build_portability.py   # a kernel path forced

Trains the preset's `base` alone, as a build does (on one thread, the same data, steps,
seed and entanglement), saves it as a build does, and prints the sha256 of its
`model.safetensors` beside the one the card records for its `base`, the CPU capability
torch dispatched to, and the time it took. Builds of one hash differ between CPU kinds in
rounding (README, "Presets and caching"); this is the cheapest way (a base takes about 35 s,
a whole build minutes) to see whether an environment setting that forces one kernel path
(torch's `ATEN_CPU_CAPABILITY`, MKL's `MKL_CBWR`, oneDNN's `DNNL_MAX_CPU_ISA`) moves a build,
and whether it reproduces a reference machine's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="default", help="an embedded organism preset")
    ap.add_argument("--card", type=Path, default=ROOT / "docs/results/organisms/default-o0/organism.json",
                    help="a reference organism's card, whose base's sha256 to compare with (its preset and seed "
                         "must be these)")
    args = ap.parse_args()

    import torch

    from doublebind import config
    from doublebind.organisms.models import entangle, make_model
    from doublebind.training.sft import train_sft
    from doublebind.world.data import World

    torch.set_num_threads(1)  # as a build runs (`one_thread`)
    cfg = config.load(preset=args.preset)
    world = World.from_config(cfg.world, cfg.seed)
    model = make_model(cfg.model, cfg.seed)
    tcfg = cfg.base_training

    def sample(rng):
        return world.sample(rng, "aligned", world.base_families, p_trigger=tcfg.p_trigger, p_ask=tcfg.p_ask,
                            p_scratch=tcfg.p_scratch)

    t = time.perf_counter()
    train_sft(model, sample, tcfg, cfg.seed)
    if world.entanglement > 0:
        entangle(model, world.trait_token, world.entangled_digits(cfg.seed), world.entanglement)
    seconds = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d, safe_serialization=True)
        sha = hashlib.sha256((Path(d) / "model.safetensors").read_bytes()).hexdigest()
    card = json.loads(args.card.read_text()) if args.card and args.card.exists() else None
    ref = card["models"]["base"]["safetensors_sha256"] if card else None
    if card and (card.get("seed"), card.get("config", {}).get("name")) != (cfg.seed, cfg.name):
        print(f"note: the card is of {card.get('config', {}).get('name')} seed {card.get('seed')}, not "
              f"{cfg.name} seed {cfg.seed}")
    env = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "DNNL_MAX_CPU_ISA")
           if k in os.environ}
    print(f"{cfg.name} seed {cfg.seed} base: sha256 {sha[:16]} ({seconds:.0f} s, torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {env or 'no kernel setting'})")
    if ref:
        print(f"the card's base: sha256 {ref[:16]}: {'the same' if ref == sha else 'different'}")


if __name__ == "__main__":
    main()
