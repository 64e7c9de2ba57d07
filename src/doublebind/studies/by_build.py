"""Each organism build of a scenario judged alone.

A scenario of several organism builds is judged over all of them (a two-level bootstrap,
organisms then seeds). Where its builds alone would be judged differently, the verdict over
all of them says which builds were drawn as much as what the technique did. `alone` judges a
scenario on one build, with its benign twin's build of the same organism seed where the
study names a twin, exactly as a study of that build alone would (`compute_summary` on the
same config narrowed to it), and `compare` sorts each verdict:

- `agree`: every build alone reaches the verdict over all builds;
- `one build decides`: the builds alone disagree, and the verdict over all of them is that of
  exactly one build;
- `several builds`: they disagree, and the verdict over all of them is that of more than one
  build but not every one (only where a scenario has three builds or more);
- `split`: they disagree, and the verdict over all of them is none of theirs.

A build alone is judged on its own seeds, so builds also disagree by seed noise. A
disagreement is `firm` where every build's verdict alone has a replication figure of at
least `FIRM`: a rerun of that build's seeds would likely reach it again.
"""

from __future__ import annotations

from doublebind.studies.run import RunKey, compute_summary

FIRM = 0.8
KINDS = ("agree", "one build decides", "several builds", "split")


def scenario_builds(runs: dict[RunKey, list[dict]], cfg, builds: set | None = None) -> dict[str, list[int]]:
    """The organism seeds with runs of each scenario the study judges (not a twin) that has
    more than one."""
    twins = set(cfg.twins.values())
    seeds: dict[str, set] = {}
    for sc, org, *_ in runs:
        if sc not in twins and (builds is None or (sc, org) in builds):
            seeds.setdefault(sc, set()).add(org)
    return {sc: sorted(s) for sc, s in seeds.items() if len(s) > 1}


def narrowed(cfg, scenario: str, seed: int):
    """The study's config narrowed to one build of `scenario` (and its twin's of that seed)."""
    if cfg.scenarios is None:  # a single-organism study: its organism seeds are the builds
        return cfg.model_copy(update={"organism_seeds": [seed]})
    twin = cfg.twins.get(scenario)
    keep = [sc.model_copy(update={"organism_seeds": [seed]}) for sc in cfg.scenarios if sc.name in (scenario, twin)]
    return cfg.model_copy(update={"scenarios": keep, "twins": {scenario: twin} if twin else {}})


def alone(runs: dict[RunKey, list[dict]], cfg, scenario: str, seed: int, builds: set | None = None) -> dict:
    """`scenario`'s techniques as `compute_summary` judges them on the build of organism seed
    `seed` alone."""
    one = narrowed(cfg, scenario, seed)
    keep = {scenario, cfg.twins.get(scenario)}
    mine = {(sc, o) for sc, o, *_ in runs if sc in keep and o == seed and (builds is None or (sc, o) in builds)}
    return compute_summary(runs, one, mine)["scenarios"][scenario]["techniques"]


def classify(overall: str, each: dict[int, str]) -> tuple[str, int | None]:
    """How the verdict over all builds relates to each build's alone: `agree`, `one build
    decides` (and which), `several builds` or `split`."""
    if all(v == overall for v in each.values()):
        return "agree", None
    same = [b for b, v in each.items() if v == overall]
    if len(same) == 1:
        return "one build decides", same[0]
    return ("several builds", None) if same else ("split", None)


def compare(techniques: dict, each: dict[int, dict], view: str = "final") -> dict[str, dict]:
    """Per technique judged over all builds (`techniques`, a scenario's summary) and on every
    build alone (`each`: seed -> `alone`), at one view: its verdict and replication over all,
    each build's, how they relate (`classify`) and whether the disagreement is firm."""
    out = {}
    for t, j in techniques.items():
        if view not in j or not all(t in e and view in e[t] for e in each.values()):
            continue
        mine = {s: e[t][view] for s, e in each.items()}
        kind, who = classify(j[view]["verdict"], {s: v["verdict"] for s, v in mine.items()})
        reps = [v.get("replication") for v in mine.values()]
        out[t] = {"verdict": j[view]["verdict"], "replication": j[view].get("replication"),
                  "alone": {s: (v["verdict"], v.get("replication")) for s, v in mine.items()},
                  "kind": kind, "decided_by": who,
                  "firm": kind != "agree" and all(isinstance(r, (int, float)) and r >= FIRM for r in reps)}
    return out


def by_build(runs: dict[RunKey, list[dict]], cfg, summary: dict, builds: set | None = None,
             scenarios: list[str] | None = None) -> dict[str, dict]:
    """For every scenario of several builds (or those named): its seeds, its twin (or None)
    and, per view, `compare` of the summary's verdicts with each build's alone."""
    out = {}
    for sc, seeds in scenario_builds(runs, cfg, builds).items():
        if sc not in summary["scenarios"] or (scenarios and sc not in scenarios):
            continue
        each = {s: alone(runs, cfg, sc, s, builds) for s in seeds}
        techniques = summary["scenarios"][sc]["techniques"]
        out[sc] = {"seeds": seeds, "twin": cfg.twins.get(sc), **{view: compare(techniques, each, view) for view in ("final", "audit_selected")}}
    return out


def counts(cells: dict[str, dict]) -> dict:
    """How many of `compare`'s cells are of each kind, which build decides how many, and how
    many disagree firmly (and of those, how many the replication over all builds marks
    provisional, below `FIRM`)."""
    c = {k: sum(x["kind"] == k for x in cells.values()) for k in KINDS}
    deciders: dict[int, int] = {}
    for x in cells.values():
        if x["decided_by"] is not None:
            deciders[x["decided_by"]] = deciders.get(x["decided_by"], 0) + 1
    firm = [x for x in cells.values() if x["firm"]]
    marked = sum(isinstance(x["replication"], (int, float)) and x["replication"] < FIRM for x in firm)
    return {**c, "verdicts": len(cells), "decided_by": dict(sorted(deciders.items())), "firm": len(firm),
            "firm_marked": marked}
