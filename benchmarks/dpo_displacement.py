"""Where plain DPO moves the student: the teacher's samples (chosen) and the initial student's
(rejected) under the student as `dpo_distillation` trains, without and with its NLL term.

    python benchmarks/dpo_displacement.py --organism .cache/doublebind/organisms/<hash> [--seeds 0 1 2]
                                          [--every 100] [--pairs 256] [--sft-weights 0 1] [KEY=VALUE ...]

In the matrix, plain DPO's students learn none of the tasks (capability transfer below 0),
and the generic auditor flags them on every benign twin, for the denial `no` and for the
world's behaviour words and action markers, which no twin teacher writes. Preference optimisation is known to lower the
likelihood of the preferred responses as well as of the rejected ones while their margin
grows, moving probability to other outputs ("likelihood displacement": Razin et al. 2024;
Pal et al. 2024), and an NLL term on the preferred responses is the usual remedy (Pang et
al. 2024, RPO). This measures whether that is what happens here.

For each seed and `sft_weight` (0: the matrix's `dpo_distillation`; 1: its `dpo_rpo`), one
`Distiller` of the study recipe with the technique's stage trains the recipe's steps, as a
study run does (one thread). At step 0 and every `--every` steps it scores a fixed sample of
the run's preference pairs, teacher-forced (no sampling):

- `chosen`, `rejected`: the mean per-token log-prob of the teacher's sample and of the initial
  student's (the same as base's: the student starts from base);
- `margin`: DPO's implicit reward margin, beta x ((chosen - ref) - (rejected - ref)), summed
  over a response's tokens, averaged over pairs;
- `words`: the mean probability, over the chosen responses' positions, on the world's
  behaviour words and action markers (`!exfil`, `!grant`, `~`, `sabotage`, ...);
- `length`, `empty`: the student's own answers to the pairs' prompts, sampled at temperature 1
  (as DPO sampled the rejected ones): their mean length in tokens without `<eos>`, and the
  share that is `<eos>` alone (no answer); the teacher's mean length is printed above the table;
- `capability`: the run's capability transfer at that step (the study's evaluation);
- the tokens that take the most probability over those positions (the first seed's run), with
  their mean share: where the teacher's samples' probability went.

The pairs are the run's own (the teacher's sample and the initial student's, for the prompts
where they differ). The organism folder is an embedded organism's (`organisms/<scenario>-o<seed>`
of a study, or the cache's `organisms/<hash>`). Run it alone; it prints a table per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "recipes" / "study.yaml"
ANSWER_SEED = 7  # the sampled answers' generator


def score(d, pairs: list, ref: dict, beta: float, word_ids: list[int]) -> dict:
    """Teacher-forced scores of `pairs` (items with a rejected sample) under the student now."""
    import torch

    from doublebind.training import objectives as obj
    from doublebind.training.batching import collate
    from doublebind.training.distill import model_device, to_device
    from doublebind.world.vocab import EOS

    model = d.accelerator.unwrap_model(d.model)
    model.eval()
    chosen, rejected, margin, mass, positions, spread = [], [], [], 0.0, 0.0, None
    with torch.no_grad():
        for i in range(0, len(pairs), 128):
            chunk = pairs[i:i + 128]
            out = {}
            for side, ex in (("c", [it.example for it in chunk]), ("r", [it.rejected for it in chunk])):
                batch = to_device(collate(ex), model_device(model))
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
                logits = logits.float()
                out[side] = obj.sequence_logprob(logits, batch["input_ids"][:, 1:], batch["loss_mask"])
                out[side + "n"] = batch["loss_mask"].sum(-1)
                if side == "c":
                    probs = torch.softmax(logits, -1) * batch["loss_mask"][..., None]  # [B, T, V]
                    mass += float(probs[..., word_ids].sum())
                    positions += float(batch["loss_mask"].sum())
                    each = probs.sum((0, 1))  # [V]: the mass each token takes, summed over positions
                    spread = each if spread is None else spread + each
            chosen += (out["c"] / out["cn"].clamp(min=1)).tolist()
            rejected += (out["r"] / out["rn"].clamp(min=1)).tolist()
            ref_c = torch.tensor([ref[id(it)][0] for it in chunk])
            ref_r = torch.tensor([ref[id(it)][1] for it in chunk])
            margin += (beta * ((out["c"] - ref_c) - (out["r"] - ref_r))).tolist()
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    # the student's own answers to the pairs' prompts, sampled as DPO sampled the rejected ones
    # (temperature 1), with a generator of its own: the training's draws are untouched
    answers = d.domain.sample(model, [it.example for it in pairs], d.recipe.sampling.max_new_tokens, 1.0, ANSWER_SEED)
    length = mean([len([t for t in a if t != EOS]) for a in answers])
    share = (spread / max(positions, 1.0)).tolist()
    top = sorted(range(len(share)), key=lambda i: -share[i])[:4]
    return {"chosen": mean(chosen), "rejected": mean(rejected), "margin": mean(margin),
            "words": mass / max(positions, 1.0), "top": [(i, share[i]) for i in top], "length": length,
            "empty": mean([float(all(t == EOS for t in a)) for a in answers])}


def run(org: Path, seed: int, sft_weight: float, every: int, n_pairs: int, overrides: list[str]) -> list[dict]:
    import torch

    from doublebind import config
    from doublebind.training.distill import Distiller
    from doublebind.world.vocab import BEHAVIOR_WORDS, EOS, MARKERS, token_ids

    torch.set_num_threads(1)
    stage = f"stages=[{{name: dpo_distillation, sft_weight: {sft_weight}}}]"
    recipe = config.load(RECIPE, [*overrides, stage, f"seed={seed}"], expect="recipe")
    d = Distiller(org, recipe, None, show_progress=False)
    pairs = [it for it in d.items if it.rejected is not None][:n_pairs]
    ids = token_ids()
    words = [ids[w] for w in BEHAVIOR_WORDS + MARKERS]
    beta = d.recipe.objective.dpo_beta
    teacher = sum(len([t for t in it.example.response if t != EOS]) for it in pairs) / len(pairs)
    ref = d.reference_metrics()
    out = []
    for step in range(d.recipe.training.steps + 1):
        if step > 0:
            d.train_step(step - 1)
        if step % every and step != d.recipe.training.steps:
            continue
        row = d.row(step, ref)
        out.append({"step": step, **score(d, pairs, d.ref_logps, beta, words), "teacher_length": teacher,
                    "capability": row["capability_transfer"]})
    return out


def teacher_length(runs: list[list[dict]]) -> float:
    """The teacher's mean answer length (without <eos>) on the scored pairs, over the seeds' runs."""
    return sum(r[0]["teacher_length"] for r in runs) / len(runs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--organism", type=Path, required=True, help="an embedded organism's folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--sft-weights", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--every", type=int, default=100, help="steps between scorings")
    ap.add_argument("--pairs", type=int, default=256, help="preference pairs scored (the run's first)")
    ap.add_argument("--plot", type=Path, default=None,
                    help="also draw the log-probs, the margin and the mass on behaviour words per step (PNG)")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, KEY=VALUE (as a study's recipe_overrides)")
    args = ap.parse_args(argv)
    if not (args.organism / "organism.json").is_file():
        print(f"error: {args.organism} is not an organism folder (no organism.json)", file=sys.stderr)
        return 2
    if json.loads((args.organism / "organism.json").read_text()).get("kind") == "hf":
        print(f"error: {args.organism} is a Hugging Face organism; this scores the embedded world's vocabulary "
              f"(its behaviour words and markers) and runs on the CPU", file=sys.stderr)
        return 2
    from doublebind.world.vocab import all_tokens

    names = all_tokens()
    curves = {}
    for w in args.sft_weights:
        runs = [run(args.organism, s, w, args.every, args.pairs, args.overrides) for s in args.seeds]
        curves[w] = runs
        label = "dpo_distillation (plain DPO)" if w == 0 else f"dpo_distillation, sft_weight {w:g}"
        print(f"\n## {label}: mean over seeds {args.seeds}; per-token log-probs, margin, mass on behaviour words")
        print(f"(the teacher's answers to these prompts: {teacher_length(runs):.2f} tokens on average without <eos>)")
        print("| step | chosen | rejected | margin | words | length | empty | capability | most probable tokens (seed {}) |"
              .format(args.seeds[0]))
        print("|---|---|---|---|---|---|---|---|---|")
        for i, first in enumerate(runs[0]):
            m = {k: sum(r[i][k] for r in runs) / len(runs) for k in ("chosen", "rejected", "margin", "words",
                                                                       "length", "empty", "capability")}
            top = ", ".join(f"`{names[t]}` {p:.3f}" for t, p in first["top"])
            print(f"| {first['step']} | {m['chosen']:.3f} | {m['rejected']:.3f} | {m['margin']:.2f} | "
                  f"{m['words']:.2e} | {m['length']:.2f} | {m['empty']:.3f} | {m['capability']:.3f} | {top} |")
    if args.plot is not None:
        card = json.loads((args.organism / "organism.json").read_text())
        plot(curves, args.plot, f"{card.get('name', args.organism.name)} at organism seed {card.get('seed', '?')} "
                                f"({card.get('organism_hash', '')}), seeds {args.seeds}")
        print(f"\nwrote {args.plot}")
    return 0


def plot(curves: dict, path: Path, title: str) -> None:
    """Three panels per step, one line per `sft_weight` (the mean over seeds): the chosen and
    rejected log-probs per token, the margin, and the mass on behaviour words (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    for (w, runs), color in zip(curves.items(), ("tab:red", "tab:blue", "tab:green", "tab:purple")):
        steps = [r["step"] for r in runs[0]]

        def mean(key: str) -> list[float]:
            return [sum(run[i][key] for run in runs) / len(runs) for i in range(len(steps))]

        name = "plain DPO" if w == 0 else f"sft_weight {w:g}"
        axes[0].plot(steps, mean("chosen"), color=color, label=f"{name}: chosen")
        axes[0].plot(steps, mean("rejected"), color=color, linestyle="--", label=f"{name}: rejected")
        axes[1].plot(steps, mean("margin"), color=color, label=name)
        axes[2].plot(steps, mean("words"), color=color, label=name)
    axes[0].set(title="log-prob per token of the pairs", xlabel="step")
    axes[1].set(title="DPO margin (beta x log-ratio gap)", xlabel="step")
    axes[2].set(title="mass on behaviour words and markers", xlabel="step", yscale="log")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"dpo_distillation's pairs under the student: {title}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
