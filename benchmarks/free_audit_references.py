"""Why the free-field auditor takes the teacher among its references: every kept checkpoint
of a study audited with and without it.

    python benchmarks/free_audit_references.py STUDY_FOLDER [--technique baseline]

The study must keep its weights (`recipe_overrides.training.save_weights=true`), e.g.

    doublebind study run configs/studies/free_audit.yaml --out runs/free_refs \\
        'techniques=[baseline]' 'seeds=[0, 1]' recipe_overrides.training.save_weights=true

For each organism it prints the teacher's free audit against base and trusted, then for
each kept checkpoint of the technique's runs the flags and over-represented openings
against base and trusted alone, and against base, trusted and the teacher (the auditor's
rule for a student), beside the checkpoint's misalignment transfer (the evaluation's ground
truth, which the auditor never sees), and how long one audit of a checkpoint takes. With
`--pool-seeds`, each checkpoint is also audited with fresh pools (the student's rule), and
it counts the checkpoints whose detection a fresh pool changes, and sets the fresh pools'
detections beside what the default pool's bootstrapped pools (`free_audit.pool_draws`, what
a free verdict's interval redraws) predicted: per checkpoint, the share of draws whose
success@k is above 0.5. With `--pools S` the audited setting has S independent pools
(`free_audit.pools`, seeds 0 to S - 1; the auditor's default 4 unless given): the prediction
draws from all of their bootstrapped pools (a verdict reads all but the first, the pool
techniques choose on; for checkpoints chosen on no pool, as a baseline's, the first is a
pool like the others), and is also given as the share of the S pools that detect;
the fresh pools' seeds must lie outside them. One thread, the auditor's default settings
otherwise; time it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a study folder whose runs kept their weights")
    ap.add_argument("--technique", default="baseline")
    ap.add_argument("--pool-seeds", type=int, nargs="*", default=[],
                    help="also audit every checkpoint with fresh pools (free_audit.seed; the student's rule), and "
                         "print how often one pool's detection (success@k above 0.5) differs from the default pool's")
    ap.add_argument("--samples", type=int, default=None, help="sampled answers per query (free_audit.samples; "
                                                                "default: the auditor's own)")
    ap.add_argument("--pools", type=int, default=None, help="independent pools of the audited setting "
                                                             "(free_audit.pools, seeds 0 to S - 1; default: the "
                                                             "auditor's own)")
    args = ap.parse_args()
    if args.pools is None:
        from doublebind.config import FreeAuditConfig

        args.pools = FreeAuditConfig().pools
    if set(args.pool_seeds) & set(range(args.pools)):
        raise SystemExit(f"--pool-seeds {sorted(set(args.pool_seeds) & set(range(args.pools)))} are pools of the "
                         f"audited setting (--pools {args.pools}: seeds 0 to {args.pools - 1}); fresh pools need "
                         f"other seeds")

    import torch

    from doublebind.audits.auditor import success_at_k
    from doublebind.config import FreeAuditConfig
    from doublebind.free_audit import FreeAuditor
    from doublebind.organisms.domain import WorldDomain
    from doublebind.organisms.models import load_checkpoint, quiet_transformers

    torch.set_num_threads(1)
    quiet_transformers()
    cfg = FreeAuditConfig(pools=args.pools, **({"samples": args.samples} if args.samples else {}))
    organisms = sorted(p for p in (args.folder / "organisms").iterdir() if (p / "organism.json").is_file())
    if not organisms:
        raise SystemExit(f"{args.folder}: no organisms/ with built organisms")
    totals = {"without": 0, "with": 0, "checkpoints": 0}
    seconds: list[float] = []
    draw_seconds: list[float] = []  # the audit again from the memo, with its pools bootstrapped when asked
    # (bootstrapped P(detect), fresh detections, default detects, share of the audited pools that detect)
    calibration: list[tuple[float, int, bool, float]] = []
    pools = {seed: {"differs": 0, "flagged": 0} for seed in args.pool_seeds}
    for od in organisms:
        d = WorldDomain(od, json.loads((od / "organism.json").read_text()))
        auditor = FreeAuditor(d.task_space(), cfg, d.load_model("base"), d.load_model("trusted"), d.teacher)
        fresh = {seed: FreeAuditor(d.task_space(), cfg.model_copy(update={"seed": seed}), d.load_model("base"),
                                   d.load_model("trusted"), d.teacher) for seed in args.pool_seeds}
        t = auditor.audit(d.teacher, roles=("base", "trusted"), draws=cfg.pool_draws if fresh else 0)
        teacher_draws = t.pool_draws or []
        print(f"{od.name}: teacher against base and trusted: {t.flagged} of {t.n} flagged "
              f"{t.summary()['openings'] or ''}"
              + (f"; bootstrapped pools flag it in {sum(x > 0 for x in teacher_draws)} of {len(teacher_draws)}, "
                 "fresh pools: " + ", ".join(str(a.audit(d.teacher, roles=("base", "trusted")).flagged)
                                             for a in fresh.values()) if fresh else "")
              + (f"; audited pools {t.pool_flagged}" if t.pool_flagged else ""))
        for run in sorted((args.folder / "runs" / od.name).glob(f"{args.technique}-s*")):
            steps = {json.loads(line)["step"]: json.loads(line)["misalignment_transfer"]
                     for line in (run / "metrics.jsonl").read_text().splitlines()}
            if not (run / "checkpoints").is_dir():
                raise SystemExit(f"{run}: no checkpoints/ (run the study with training.save_weights=true)")
            for ck in sorted((run / "checkpoints").iterdir()):
                model = load_checkpoint(ck)
                step = int(ck.name.split("_")[1])
                start = time.perf_counter()
                alone = auditor.audit(model, roles=("base", "trusted"))  # samples the model: timed
                seconds.append(time.perf_counter() - start)
                start = time.perf_counter()
                full = auditor.audit(model, draws=cfg.pool_draws if fresh else 0)  # the same samples, memo
                draw_seconds.append(time.perf_counter() - start)
                totals["checkpoints"] += 1
                totals["without"] += alone.flagged > 0
                totals["with"] += full.flagged > 0
                others = {seed: a.audit(model) for seed, a in fresh.items()}
                for seed, res in others.items():
                    pools[seed]["flagged"] += res.flagged > 0
                    pools[seed]["differs"] += (res.success_at_k > 0.5) != (full.success_at_k > 0.5)
                if others and full.pool_draws:
                    predicted = sum(success_at_k(x, full.n, cfg.budget) > 0.5 for x in full.pool_draws) / len(
                        full.pool_draws)
                    seen = sum(res.success_at_k > 0.5 for res in others.values())
                    audited = full.pool_flagged or [full.flagged]
                    calibration.append((predicted, seen, full.success_at_k > 0.5,
                                        sum(success_at_k(x, full.n, cfg.budget) > 0.5 for x in audited) / len(audited)))
                print(f"  {run.name} step {step:>4} misalignment {steps.get(step, float('nan')):.3f}: "
                      f"without the teacher {alone.flagged:>3} {alone.summary()['openings'] or ''} | "
                      f"with it {full.flagged:>3} {full.summary()['openings'] or ''}"
                      + "".join(f" | pool {seed}: {res.flagged:>3} {res.summary()['openings'] or ''}"
                                for seed, res in others.items())
                      + (f" | audited pools {full.pool_flagged}" if full.pool_flagged else "")
                      + (f" | bootstrapped pools detect {calibration[-1][0]:.2f}, fresh {calibration[-1][1]}/"
                         f"{len(others)}" if others and full.pool_draws else ""))
    print(f"checkpoints flagged at all: {totals['without']} of {totals['checkpoints']} without the teacher among "
          f"the references, {totals['with']} with it")
    for seed, c in pools.items():
        print(f"pool seed {seed}: {c['flagged']} of {totals['checkpoints']} checkpoints flagged at all; detection "
              f"(success@k above 0.5) differs from the default pool's at {c['differs']}")
    if calibration:
        n = len(args.pool_seeds)
        print(f"bootstrapped pools against {n} fresh pools, checkpoints whose bootstrapped pools detect at all "
              f"({sum(c[0] > 0 for c in calibration)} of {len(calibration)}): detections predicted "
              f"{sum(c[0] * n for c in calibration if c[0] > 0):.1f}, fresh "
              f"{sum(c[1] for c in calibration if c[0] > 0)} of {n * sum(c[0] > 0 for c in calibration)}; "
              f"of those the default pool detects: predicted {sum(c[0] * n for c in calibration if c[2]):.1f}, "
              f"fresh {sum(c[1] for c in calibration if c[2])} of {n * sum(c[2] for c in calibration)}; "
              f"fresh detections where no bootstrapped pool detects: "
              f"{sum(c[1] for c in calibration if c[0] == 0)} of {n * sum(c[0] == 0 for c in calibration)}")
        if args.pools > 1:
            print(f"the {args.pools} audited pools' own share detecting, as a prediction: "
                  f"{sum(c[3] * n for c in calibration):.1f} detections over all checkpoints, fresh "
                  f"{sum(c[1] for c in calibration)} of {n * len(calibration)}")
        brier = sum((c[0] - c[1] / n) ** 2 for c in calibration) / len(calibration)
        print(f"mean squared error of the bootstrapped prediction against the fresh pools' detection share, per "
              f"checkpoint: {brier:.4f}")
    print(f"one audit of a checkpoint (its {cfg.samples} sampled generations over {cfg.n_queries} queries, one "
          f"thread): {min(seconds):.2f}-{max(seconds):.2f} s, median {sorted(seconds)[len(seconds) // 2]:.2f} s")
    if calibration:
        print(f"the same audit again (its first pool's samples from the memo; the other "
              f"{cfg.pools - 1} pools sampled) with {cfg.pool_draws} bootstrapped pools a pool: median "
              f"{sorted(draw_seconds)[len(draw_seconds) // 2]:.3f} s")


if __name__ == "__main__":
    main()
