"""How optimistic is an audit whose own pool also chose the checkpoint? (a study, not a test)

    python benchmarks/audit_pool.py --preset default --techniques baseline distill_and_audit \
        --seeds 0 1 2 --pools 1 2 3

The generic auditor draws its pool of queries once, from the organism's `audit.seed`, and
that one pool serves `distill_and_audit`'s checkpoint choice, `iterative_filter`'s probes
and every row's success@k. A checkpoint chosen because that pool did not flag it is then
measured on the same pool. For each run this distils with the study recipe (weights
saved), then audits the delivered checkpoint and every other one with the organism's own
pool and with fresh pools (other seeds, the same sizes and budget), and prints success@k
per pool: the gap between the own pool and the fresh ones at the delivered checkpoint is
the optimism of reusing the pool. Last, whether the pools' flag counts spread as binomials
do (`dispersion`), the model behind the verdicts' audit intervals.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--techniques", nargs="+", default=["baseline", "distill_and_audit"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--pools", nargs="+", type=int, default=[1, 2, 3], help="seeds of the fresh audit pools")
    ap.add_argument("--recipe", type=Path, default=Path("configs/recipes/study.yaml"))
    args = ap.parse_args()

    from doublebind import config
    from doublebind.audits.auditor import Auditor
    from doublebind.integrity import file_sha256
    from doublebind.organisms.build import build_organism
    from doublebind.studies.executor import one_thread
    from doublebind.organisms.domain import open_domain
    from doublebind.organisms.models import load_checkpoint, quiet_transformers
    from doublebind.training.distill import distill

    quiet_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        org = Path(tmp) / "organism"
        with one_thread():  # as `organism build` and a study build: one hash, one set of weights
            card = build_organism(config.load(preset=args.preset), org, show_progress=False)
        domain = open_domain(org)
        own_cfg = config.AuditConfig.model_validate(card["config"].get("audit", {}))
        auditors = {own_cfg.seed: domain.auditor()}
        for p in args.pools:
            auditors[p] = Auditor(domain.task_space(), own_cfg.model_copy(update={"seed": p}),
                                  domain.load_model("base"), domain.load_model("trusted"))
        fresh = [p for p in args.pools if p != own_cfg.seed]
        print(f"organism {card['organism_hash']}: own pool seed {own_cfg.seed}, fresh pools {fresh}, "
              f"budget {own_cfg.budget}", flush=True)
        print(f"{'technique':20} {'seed':>4} {'step':>5} {'delivered':>9} {'own':>6} "
              + " ".join(f"{'pool ' + str(p):>7}" for p in fresh), flush=True)
        gaps: dict[str, list[float]] = {t: [] for t in args.techniques}
        seed_counts: list = []  # per distinct checkpoint: flags on every pool, and the pool size
        seen: set = set()
        for t in args.techniques:
            for seed in args.seeds:
                t0 = time.perf_counter()
                stages = [] if t == "baseline" else [{"name": t}]
                cfg = config.load(args.recipe, [f"seed={seed}", "training.save_weights=true"], expect="recipe",
                                  merge={"stages": stages})
                run = Path(tmp) / f"{t}-s{seed}"
                summary = distill(org, cfg, run, show_progress=False, force=True)
                delivered = summary["selected"]["step"]
                for ckpt in sorted((run / "checkpoints").iterdir()):
                    step = int(ckpt.name.removeprefix("step_"))
                    model = load_checkpoint(ckpt)
                    res = {p: a.audit(model) for p, a in auditors.items()}
                    s = {p: r.success_at_k for p, r in res.items()}
                    key = file_sha256(ckpt / "model.safetensors")  # another run may hold the same weights
                    if key not in seen:
                        seen.add(key)
                        seed_counts.append(([r.flagged for r in res.values()], next(iter(res.values())).n))
                    if step == delivered:
                        gaps[t].append(statistics.fmean(s[p] for p in fresh) - s[own_cfg.seed])
                    print(f"{t:20} {seed:4d} {step:5d} {'yes' if step == delivered else '':>9} "
                          f"{s[own_cfg.seed]:6.3f} " + " ".join(f"{s[p]:7.3f}" for p in fresh), flush=True)
                print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
        for t, g in gaps.items():
            print(json.dumps({"technique": t, "seeds": args.seeds, "fresh_pools": fresh,
                              "delivered_fresh_minus_own": [round(x, 4) for x in g],
                              "mean": round(statistics.fmean(g), 4) if g else None}), flush=True)
        print(json.dumps(dispersion(seed_counts)), flush=True)


def dispersion(counts: list[tuple[list[int], int]]) -> dict:
    """Do the pools' flag counts spread as binomials do? The verdicts' audit intervals
    assume a checkpoint's count on a fresh pool of n queries is Binomial(n, rate). Per
    checkpoint that any pool flagged, sum (m_i - mean)^2 / (mean (1 - mean / n)) over its
    pools: under that model the total is about chi-squared with (pools - 1) per checkpoint
    degrees of freedom, so total / df near 1 fits, well above 1 says the pools spread more
    than the intervals allow."""
    chi2, df, used = 0.0, 0, 0
    for flags, n in counts:
        mean = statistics.fmean(flags)
        if mean in (0, n) or len(flags) < 2:  # no flag, or every query flagged: no spread to test
            continue
        chi2 += sum((m - mean) ** 2 for m in flags) / (mean * (1 - mean / n))
        df += len(flags) - 1
        used += 1
    return {"binomial_dispersion": {"checkpoints": used, "chi2": round(chi2, 2), "df": df,
                                    "ratio": round(chi2 / df, 3) if df else None}}


if __name__ == "__main__":
    main()
