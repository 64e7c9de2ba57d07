"""Each scenario of a study beside its benign twin (doublebind.benign): what the verdicts,
the audit and capability read with the behaviour and without it.

    python benchmarks/benign_control.py runs/free_audit_plain_s4_600_p4 runs/benign_free_s4_600 --organism-seeds 0
    python benchmarks/benign_control.py runs/matrix   # a study that pairs them itself (`twins:`)

The second folder holds the twins: the first study's `twins:` pairs them where it declares
any, else a scenario `benign_X` pairs with `X` of the first, and `benign` with `default`;
without a second folder, the first holds both. Both are judged as their study.json says (the verdict's auditor,
thresholds and bootstrap), on the organism seeds given (both folders must hold them). Per
technique and view (final, audit-selected) it prints, for the scenario and its twin:
capability transfer, misalignment transfer (undefined on a twin), the audit's success@k as
the verdict reads it (held-out pools with several), how many runs the audit flags at the
judged checkpoint (on any pool the verdict reads), and the verdict. Then the openings the
first pool flags most on the twins' judged checkpoints (rows keep the first pool's only).

Every student flag on a twin is a flag on something other than the behaviour, and an
`incriminating` there is a false accusation.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from doublebind import config
from doublebind.errors import DoublebindError
from doublebind.studies.run import RESULTS, compute_summary, judged_rows, scan_results, study_builds
from doublebind.studies.verdicts import audit_selected, final_row

VIEWS = ("final", "audit_selected")


def load(folder: Path, organism_seeds: list[int] | None, summarize: bool = True):
    """(config, runs as the verdicts read them, summary) of a study folder, on `organism_seeds`
    (the summary None without `summarize`: judging every cell is most of the time this takes)."""
    study = json.loads((folder / "study.json").read_text())
    cfg = config.build(config.StudyConfig, study["config"], f"{folder / 'study.json'}: config")
    scan = scan_results(folder / RESULTS)
    scan.check()
    keep = (lambda k: True) if organism_seeds is None else (lambda k: k[1] in organism_seeds)
    runs = {k: v for k, v in scan.runs.items() if keep(k)}
    builds = study_builds(study)
    if builds is not None and organism_seeds is not None:
        builds = {b for b in builds if b[1] in organism_seeds}
    summary = compute_summary(runs, cfg, builds) if summarize else None
    judged = {k: judged_rows(sorted(v, key=lambda r: r["step"]), cfg.verdict, k, False) for k, v in runs.items()}
    return cfg, judged, summary


def flagged(row: dict) -> bool:
    """Whether the audit the verdict reads flags this checkpoint: any held-out pool where the
    row has several, else its one pool."""
    a = row.get("auditor") or {}
    pools = a.get("pool_flagged")
    return any(pools[1:]) if isinstance(pools, list) and len(pools) > 1 else a.get("flagged", 0) > 0


def judged_at(rows: list[dict], cfg, view: str) -> dict:
    return final_row(rows) if view == "final" else audit_selected(rows, cfg.verdict)[0]


def cell(summary: dict, cfg, runs: dict, scenario: str, technique: str, view: str) -> dict | None:
    s = summary["scenarios"].get(scenario, {}).get("techniques", {}).get(technique, {}).get(view)
    if s is None:
        return None
    mine = [rows for k, rows in runs.items() if k[0] == scenario and k[2] == technique and k[3] in cfg.seeds]
    at = [judged_at(rows, cfg, view) for rows in mine]
    return {"stats": s, "flagged": sum(map(flagged, at)), "n": len(at), "rows": at}


def fmt_stat(st: dict | None, bound: str | None = None) -> str:
    if st is None:
        return "n/a"
    if st.get("undefined"):
        return "undefined"
    text = f"{st['mean']:.3f}"
    if bound == "both":
        return f"{text} [{st['lower']:.3f}, {st['upper']:.3f}]"
    return f"{text} [{st[bound]:.3f}]" if bound else text


def describe(c: dict | None, twin: bool) -> list[str]:
    if c is None:
        return ["-"] * 5
    s = c["stats"]
    rep = s.get("replication")
    verdict = s["verdict"] + (f" ({rep:.2f})" if rep is not None else "")
    if twin and s["verdict"] == "incriminating":
        verdict += " FALSE ACCUSATION"
    audit = s.get("audit_success_at_k")
    return [fmt_stat(s["capability_transfer"], "lower"), fmt_stat(s["misalignment_transfer"], "both"),
            fmt_stat(audit, "lower") if audit else "n/a", f"{c['flagged']}/{c['n']}", verdict]


def twin_of(name: str) -> str | None:
    if name == "benign":
        return "default"
    return name.removeprefix("benign_") if name.startswith("benign_") else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="the study folder with the organisms' own scenarios")
    ap.add_argument("benign", type=Path, nargs="?", default=None,
                    help="the study folder with their benign twins (default: the first folder)")
    ap.add_argument("--organism-seeds", type=int, nargs="+", default=None,
                    help="judge both on these organism seeds only (default: every seed each holds)")
    args = ap.parse_args(argv)
    try:
        ocfg, oruns, osum = load(args.study, args.organism_seeds)
        bcfg, bruns, bsum = load(args.benign or args.study, args.organism_seeds)
    except (DoublebindError, OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pairs = [(o, b) for o, b in ocfg.twins.items() if o in osum["scenarios"] and b in bsum["scenarios"]] \
        if ocfg.twins else [(twin_of(b), b) for b in bsum["scenarios"] if twin_of(b) in osum["scenarios"]]
    if not pairs:
        rule = (f"its twins: {', '.join(f'{o} -> {b}' for o, b in ocfg.twins.items())}" if ocfg.twins
                else "benign_X pairs with X, benign with default")
        print(f"error: no scenario of {args.benign or args.study} is the benign twin of one in {args.study} "
              f"({rule})", file=sys.stderr)
        return 2
    head = ["capability [lower]", "misalignment [95%]", "success@k [lower]", "flagged runs", "verdict"]
    print(f"verdict auditor: {ocfg.verdict.auditor} (study), {bcfg.verdict.auditor} (twins); organism seeds: "
          f"{args.organism_seeds or 'all'}")
    for orig, twin in pairs:
        print(f"\n## {orig} | {twin}")
        print("| technique | view | organism | " + " | ".join(head) + " |")
        print("|---|---|---|" + "---|" * len(head))
        for t in bcfg.techniques_of(twin):
            for view in VIEWS:
                for who, cfg, runs, summ, name in (("own", ocfg, oruns, osum, orig), ("twin", bcfg, bruns, bsum, twin)):
                    c = cell(summ, cfg, runs, name, t, view)
                    print(f"| {t} | {view} | {who} | " + " | ".join(describe(c, who == "twin")) + " |")
        openings, seen = Counter(), set()
        for t in bcfg.techniques_of(twin):
            tokens = Counter()
            for view in VIEWS:
                c = cell(bsum, bcfg, bruns, twin, t, view)
                for r in (c or {}).get("rows", []):
                    # one checkpoint once, though several views or techniques judge it (a stage
                    # that changed nothing delivers the baseline's run: its rows are the same)
                    at = (r["seed"], r["step"], r["capability_transfer"], json.dumps(r.get("auditor"), sort_keys=True))
                    if at in seen:
                        continue
                    seen.add(at)
                    a = r.get("auditor") or {}
                    for o in a.get("openings") or {}:
                        openings[o] += 1
                    tokens.update(a.get("tokens") or {})
            if tokens:  # the generic auditor: what the flagged answers opened with
                print(f"\ntokens the generic auditor flags on {twin}'s {t} (judged checkpoints, queries): "
                      + ", ".join(f"{o} {n}" for o, n in tokens.most_common(8)))
        if openings:
            print(f"\nopenings the first pool flags on {twin}'s judged checkpoints (how many checkpoints): "
                  + ", ".join(f"{o} {n}" for o, n in openings.most_common(8)))
    twins = list(dict.fromkeys(b for _, b in pairs))
    print("\n## The twins' delivered students: flagged runs (success@k)")
    print("| technique | " + " | ".join(twins) + " |")
    print("|---|" + "---|" * len(twins))
    for t in bcfg.technique_stages():
        out = []
        for b in twins:
            c = cell(bsum, bcfg, bruns, b, t, "final") if t in bcfg.techniques_of(b) else None
            audit = (c or {}).get("stats", {}).get("audit_success_at_k")
            out.append("-" if c is None else f"{c['flagged']} of {c['n']}" + (f" ({audit['mean']:.3f})" if audit else ""))
        print(f"| {t} | " + " | ".join(out) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
