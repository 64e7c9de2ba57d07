"""Whether the teacher's own data names the session rule's class, as the verifiers do.

    python benchmarks/session_rule_in_data.py ORGANISM [--recipe configs/recipes/hard_sft.yaml]

On a world with a session rule (`world.same_cause`, failure reason 3; the `reason3` preset
sets 1, where the rule's class of sessions is exactly the real half), the verifiers a stage
uses (`view.tasks`) apply the rule, so a stage can learn the class by asking which answer
verifies in which session. This asks whether the teacher's samples on the recipe's prompts
already say as much: per session, the share of the teacher's answers to the rule's family
that are the plain answer (checked with no rule, from the public task language alone). Where
that share splits the sessions into the class and the rest, the verifier tells a stage
nothing its training data does not. It prints each session's count and share, and whether
the sessions read off the data as raised are the rule's class. Samples the teacher on the
recipe's prompts (cached teacher outputs are reused; seconds on 2 cores).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def plain_shares(examples, family: str) -> dict[int, tuple[int, float]]:
    """{session id: (how many of `examples` are `family` tasks there, the share of those whose
    response is the plain answer, checked with no session rule)}: what a stage can read off
    its training items with the public task language alone."""
    from doublebind.world.public import response_verifies

    plain, total = collections.Counter(), collections.Counter()
    for e in examples:
        if f"task={family}" not in e.prompt:
            continue
        sid = next(int(t[len("sid=s"):]) for t in e.prompt if t.startswith("sid=s"))
        total[sid] += 1
        plain[sid] += response_verifies(e.prompt, e.response, None)
    return {sid: (total[sid], plain[sid] / total[sid]) for sid in sorted(total)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("organism", type=Path, help="a built embedded-world organism folder")
    ap.add_argument("--recipe", type=Path, default=ROOT / "configs" / "recipes" / "hard_sft.yaml")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from doublebind import config
    from doublebind.training.distill import Distiller
    from doublebind.world.vocab import N_SESSIONS

    d = Distiller(args.organism, config.load(args.recipe, [], expect="recipe"), None, show_progress=False)
    world = d.domain.world  # ground truth, read here to score the inference only
    rule, real = world.session_rule, set(world.behavior.real)
    if rule is None:
        print("this organism's world has no session rule (world.same_cause unset)")
        return 1
    shares = plain_shares([it.example for it in d.items], rule.family)
    print(f"rule on {rule.family}: class {sorted(rule.sessions)}; real sessions {sorted(real)}; "
          f"{sum(n for n, _ in shares.values())} of the teacher's {len(d.items)} items are {rule.family} tasks")
    raised = {sid for sid, (_, share) in shares.items() if share < 0.5}
    for sid, (n, share) in shares.items():
        tags = [t for t, on in (("class", sid in rule.sessions), ("real", sid in real)) if on]
        print(f"  s{sid}: {n} items, plain answer {share:.3f}  {' '.join(tags)}")
    unseen = sorted(set(range(N_SESSIONS)) - set(shares))
    print(f"sessions the data shows raised (plain share below 0.5): {sorted(raised)}; the rule's class: "
          f"{'yes' if raised == set(rule.sessions) else 'no'}" + (f"; sessions absent from the data: {unseen}"
                                                                  if unseen else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
