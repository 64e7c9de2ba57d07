"""Which verdicts two runs of a study share, and whether the first run's replication figures
said so: `doublebind study compare A B`.

A study's verdicts come with `replication`, the estimated probability that a rerun of the
same design (new seeds, new organism builds) reaches the same verdict. Rerunning a study on
another CPU, with another runner (packing, `training.compile`), or after a change that should
not matter, gives a second folder; this module puts the two side by side, cell by cell
(scenario, technique, delivered or audit-selected), and checks the first folder's figures
against what happened: how many cells kept their verdict against how many its replication
figures expected (their sum), and whether the cells that moved were the ones it marked
provisional. Both summaries are recomputed from each folder's results.jsonl, as the report
does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from doublebind.errors import DoublebindError
from doublebind.studies.verdicts import few_seeds, provisional

VIEWS = {"final": "delivered", "audit_selected": "audit-selected"}


@dataclass(frozen=True)
class Cell:
    scenario: str
    technique: str
    view: str  # delivered | audit-selected
    a: str | None  # verdict in A (None: the cell is not in A)
    b: str | None
    a_replication: float | None
    a_replication_same_organisms: float | None  # for a rerun on A's organism builds (several builds only)
    a_provisional: bool
    a_misalignment: float | None
    b_misalignment: float | None

    @property
    def shared(self) -> bool:
        return self.a is not None and self.b is not None

    @property
    def same(self) -> bool:
        return self.shared and self.a == self.b


def _cells(summary: dict) -> dict[tuple[str, str, str], dict]:
    return {(sc, t, VIEWS[view]): stats
            for sc, block in summary["scenarios"].items()
            for t, res in block["techniques"].items()
            for view, stats in res.items() if view in VIEWS and isinstance(stats, dict) and "verdict" in stats}


def _mean(stats: dict | None, field: str) -> float | None:
    """A cell's mean transfer; None where the cell is absent or no run defined it."""
    if not stats or stats[field].get("undefined"):
        return None
    return stats[field]["mean"]


def compare(a: dict, b: dict) -> dict:
    """Two study summaries, cell by cell (a cell: scenario, technique, view). Returns "cells"
    ([Cell]), "shared" (cells in both), "same_all" (shared cells that kept their verdict),
    "with_replication", "expected_same" and "same" (the shared cells with an A replication,
    its sum over them, and how many of them kept their verdict), "moved", "moved_provisional"
    and "moved_unrated" (moved cells A marked provisional, and those it could not rate),
    "held_provisional", "only_a", "only_b", "power" (A's) and "thresholds_differ" (the two
    judge with other thresholds or bootstrap settings). With several organism builds per scenario A also
    has `replication_same_organisms`, the figure for a rerun on the same builds with new seeds:
    `with_replication_same_organisms`, `expected_same_organisms` and `same_same_organisms` are
    the same three for it (a rerun that only changes rounding, on the same builds, is closer to
    that one)."""
    power = a["verdict_thresholds"].get("power", 0.8)
    ca, cb = _cells(a), _cells(b)
    cells = []
    for key in list(ca) + [k for k in cb if k not in ca]:
        sa, sb = ca.get(key), cb.get(key)
        cells.append(Cell(*key, a=sa and sa["verdict"], b=sb and sb["verdict"],
                          a_replication=sa.get("replication") if sa else None,
                          a_replication_same_organisms=sa.get("replication_same_organisms") if sa else None,
                          a_provisional=bool(sa) and provisional(sa, power),
                          a_misalignment=_mean(sa, "misalignment_transfer"),
                          b_misalignment=_mean(sb, "misalignment_transfer")))
    shared = [c for c in cells if c.shared]
    rated = [c for c in shared if c.a_replication is not None]
    moved = [c for c in shared if not c.same]
    held = [c for c in shared if c.same]
    return {
        "cells": cells, "shared": len(shared), "same_all": sum(c.same for c in shared),
        "with_replication": len(rated), "same": sum(c.same for c in rated),
        "expected_same": sum(c.a_replication for c in rated),
        **_same_builds(cells),
        "moved": len(moved), "moved_provisional": sum(c.a_provisional for c in moved),
        "moved_unrated": sum(c.a_replication is None for c in moved),
        "held_provisional": sum(c.a_provisional for c in held),
        "only_a": sum(c.b is None for c in cells), "only_b": sum(c.a is None for c in cells),
        "power": power, "thresholds_differ": _thresholds(a) != _thresholds(b),
        # scenarios whose intervals count the evaluation sets' draw in one study and not the other
        "eval_draw_differs": [[sc, bool(a["scenarios"][sc].get("eval_draw")), bool(b["scenarios"][sc].get("eval_draw"))]
                              for sc in a["scenarios"] if sc in b["scenarios"]
                              and bool(a["scenarios"][sc].get("eval_draw")) != bool(b["scenarios"][sc].get("eval_draw"))],
    }


def _same_builds(cells: list[Cell], rebuilt: set[str] = frozenset()) -> dict:
    """The counts for A's `replication_same_organisms` over the shared cells, leaving out the
    scenarios in `rebuilt`, whose organism builds B did not share."""
    kept = [c for c in cells if c.shared and c.a_replication_same_organisms is not None and c.scenario not in rebuilt]
    return {"with_replication_same_organisms": len(kept), "same_same_organisms": sum(c.same for c in kept),
            "expected_same_organisms": sum(c.a_replication_same_organisms for c in kept)}


def _thresholds(summary: dict) -> dict:
    """What decides a verdict besides the rows: the thresholds and the bootstrap's settings."""
    return {**{k: v for k, v in summary["verdict_thresholds"].items() if k != "power"},
            "bootstrap": summary.get("bootstrap")}


def compare_folders(a_dir: Path, b_dir: Path) -> dict:
    """`compare` on two study folders' recomputed summaries; refuses the same folder twice."""
    from doublebind.reports.study_report import LIBRARIES, left_out_of, load_study

    if Path(a_dir).resolve() == Path(b_dir).resolve():
        raise DoublebindError(f"{a_dir} and {b_dir} are the same folder; compare a study with a rerun of it")
    study_a, scan_a, a = load_study(Path(a_dir), "study compare")
    study_b, scan_b, b = load_study(Path(b_dir), "study compare")
    result = compare(a, b)
    result["left_out"] = {"A": left_out_of(scan_a), "B": left_out_of(scan_b)}
    ba, bb = _builds(study_a), _builds(study_b)
    both = [k for k in ba if k in bb]
    # a scenario built from other organism seeds in B (one of A's builds missed its verification
    # there, say): its cells compare other builds, which A's same-builds figures do not expect
    scenarios = {k[0] for k in ba} & {k[0] for k in bb}
    result["builds_differ"] = [[sc, sorted(o for s_, o in ba if s_ == sc and (sc, o) not in bb),
                                sorted(o for s_, o in bb if s_ == sc and (sc, o) not in ba)]
                               for sc in sorted(scenarios) if {k for k in ba if k[0] == sc} != {k for k in bb if k[0] == sc}]
    result["organisms_shared"] = len(both)
    rehashed = [k for k in both if ba[k][0] != bb[k][0]]
    # weights are known where study.json keeps the cards (studies run since 2026-12-03)
    rebuilt = [k for k in both if ba[k][0] == bb[k][0] and None not in (ba[k][1], bb[k][1]) and ba[k][1] != bb[k][1]]
    result["organisms_rehashed"], result["organisms_rebuilt"] = len(rehashed), len(rebuilt)
    # A's figures for a rerun on the same builds leave out every scenario whose builds B does not
    # share: other seeds, another build hash, or the same hash built into other weights
    other_builds = {sc for sc, _, _ in result["builds_differ"]} | {k[0] for k in rehashed + rebuilt}
    if other_builds:
        result.update(_same_builds(result["cells"], other_builds))
    result["same_builds_left_out"] = sorted(other_builds)
    result["one_build_per_scenario"] = all(c.get("n_organisms", 1) <= 1 for c in _cells(a).values())
    ra, rb = _recipes(scan_a.rows), _recipes(scan_b.rows)
    shared = [k for k in ra if k in rb]  # the same run (scenario, organism seed, technique, seed) in both
    result["studies"] = [a.get("study"), b.get("study")]
    result["recipes_shared"] = len({(k[0], k[2]) for k in shared})  # (scenario, technique) pairs
    result["recipes_differ"] = len({(k[0], k[2]) for k in shared if ra[k] != rb[k]})
    result["versions_differ"] = _differ(_provenance(study_a, "versions"), _provenance(study_b, "versions"), LIBRARIES)
    ma, mb = _provenance(study_a, "machine"), _provenance(study_b, "machine")
    result["machines_differ"] = _differ(ma, mb, ("cpu", "cpu_kernels", "machine"))
    # a record from before the CPU was kept cannot say whether the other ran on another one
    result["cpu_unrecorded"] = [side for side, m, other in (("A", ma, mb), ("B", mb, ma))
                                if m.get("cpu") is None and other.get("cpu") is not None]
    # another design (seeds, organism builds per scenario): A's replication figures are for A's own
    da, db = _design(study_a), _design(study_b)
    result["designs_differ"] = [[sc, *da[sc], *db[sc]] for sc in da if sc in db and da[sc] != db[sc]]
    result["a_seeds"] = min((seeds for seeds, _ in da.values()), default=None)
    return result


def _design(study: dict) -> dict[str, tuple[int, int]]:
    """scenario -> (seeds per organism build, organism builds) as a study record plans them."""
    cfg = study.get("config") if isinstance(study.get("config"), dict) else {}
    seeds = cfg.get("seeds") if isinstance(cfg.get("seeds"), list) else []
    builds: dict[str, int] = {}
    for o in study.get("organisms") or []:
        if isinstance(o, dict):
            builds[o.get("scenario")] = builds.get(o.get("scenario"), 0) + 1
    return {sc: (len(seeds), n) for sc, n in builds.items()}


def _provenance(study: dict, key: str) -> dict:
    prov = study.get("provenance") if isinstance(study.get("provenance"), dict) else {}
    return prov.get(key) if isinstance(prov.get(key), dict) else {}


def _differ(a: dict, b: dict, keys: tuple[str, ...]) -> list[list]:
    """[key, A's, B's] for each key both records name with different values (one left
    unrecorded says nothing)."""
    return [[k, a[k], b[k]] for k in keys if a.get(k) is not None and b.get(k) is not None and a[k] != b[k]]


def _builds(study: dict) -> dict[tuple, tuple]:
    """(scenario, organism seed) -> (build hash, its models' weight hashes or None) from a
    study record: the weights only where it keeps each organism's card."""
    out = {}
    for o in study.get("organisms") or []:
        if not isinstance(o, dict):
            continue
        card = o.get("card") if isinstance(o.get("card"), dict) else {}
        models = card.get("models") if isinstance(card.get("models"), dict) else {}
        weights = tuple(sorted((role, m["safetensors_sha256"]) for role, m in models.items()
                               if isinstance(m, dict) and m.get("safetensors_sha256")))
        out[(o.get("scenario"), o.get("organism_seed"))] = (o.get("organism_hash"), weights or None)
    return out


def _recipes(rows: list[dict]) -> dict[tuple, str | None]:
    """The recipe hash of each run of a study's rows, by (scenario, organism seed, technique, seed)."""
    return {(r["scenario"], r.get("organism_seed"), r["technique"], r.get("seed")): r.get("recipe_hash")
            for r in rows}


def notes(result: dict) -> list[str]:
    """What makes two folders something other than one study run twice: `study compare` prints
    these before its table, since each one, not training noise, may be why a verdict moved."""
    out = []
    names = result.get("studies") or [None, None]
    if names[0] != names[1]:
        out.append(f"A is study '{names[0]}' and B is study '{names[1]}': compared cell by cell as if B reran A")
    if result.get("recipes_differ"):
        out.append(f"{result['recipes_differ']} of {result['recipes_shared']} shared (scenario, technique) pairs ran "
                   f"another recipe in B (their recipe hashes differ); a moved verdict may be the recipe's")
    if result.get("thresholds_differ"):
        out.append("the two studies judge with different verdict thresholds; a moved verdict may be the rule's")
    for sc, in_a, _ in result.get("eval_draw_differs") or []:
        has, lacks = ("A", "B") if in_a else ("B", "A")
        out.append(f"on scenario {sc}, {has}'s intervals count the evaluation sets' draw and {lacks}'s do not (not "
                   f"all its rows keep per-prompt scores): a moved verdict may be the intervals' width, not the runs")
    shared = result.get("organisms_shared", 0)
    if result.get("organisms_rehashed"):
        out.append(f"{result['organisms_rehashed']} of {shared} shared organisms (scenario, organism seed) have "
                   f"another build hash in B (another config or build code); a moved verdict may be the organism's, "
                   f"and A's figures for a rerun on the same builds leave their scenarios' cells out")
    if result.get("organisms_rebuilt"):
        out.append(f"{result['organisms_rebuilt']} of {shared} shared organisms are other builds in B: the same build "
                   f"hash, other weights (built on another machine, whose rounding differs), so A's figures for a "
                   f"rerun on the same builds leave their scenarios' cells out"
                   + ("; with one build per scenario, A's replication figures cannot see how much a verdict "
                      "depends on its build" if result.get("one_build_per_scenario") else ""))
    if result.get("versions_differ"):
        out.append("B ran with other libraries (" + ", ".join(f"{k} {a} -> {b}" for k, a, b in result["versions_differ"])
                   + "): their kernels may round differently; a moved verdict may be theirs")
    if result.get("machines_differ"):
        out.append("B ran on another machine (" + ", ".join(f"{k} {a} -> {b}" for k, a, b in result["machines_differ"])
                   + "), whose rounding differs")
    for side in result.get("cpu_unrecorded") or []:
        other = "B" if side == "A" else "A"
        out.append(f"{side}'s record does not name its CPU (a study run before doublebind kept it), so whether "
                   f"{other} ran on another machine, whose rounding differs, is unknown")
    for sc, only_a, only_b in result.get("builds_differ") or []:
        seeds = lambda xs: ", ".join(map(str, xs)) or "none"  # noqa: E731
        out.append(f"scenario {sc} has organism builds of other seeds (only in A: {seeds(only_a)}; only in B: "
                   f"{seeds(only_b)}): a moved verdict may be the builds', and A's figures for a rerun on the same "
                   f"builds leave its cells out")
    for sc, sa, ka, sb, kb in result.get("designs_differ") or []:
        out.append(f"B plans scenario {sc} with another design ({_n(sb, 'seed', 'seeds')} on "
                   f"{_n(kb, 'organism build', 'organism builds')}, A {sa} on {ka}): A's replication figures "
                   f"expect a rerun of A's own design")
    for side, items in (result.get("left_out") or {}).items():
        if items:
            out.append(f"{side}'s results leave out " + "; ".join(items) + ": its cells hold only its complete runs")
    return out


def as_json(result: dict) -> dict:
    return {**result, "cells": [asdict(c) | {"same": c.same} for c in result["cells"]]}


def _n(k: int, one: str, many: str) -> str:
    return f"{k} {one if k == 1 else many}"


def sentence(result: dict) -> str:
    """The comparison in one line: kept, expected, and which moved."""
    r = result
    parts = []
    if not r["shared"]:
        parts.append("the two studies share no cell (scenario, technique, view)")
    else:
        parts.append(f"{r['same_all']} of {_n(r['shared'], 'shared verdict', 'shared verdicts')} the same")
    if r["with_replication"]:
        parts.append(f"A's replication figures expected {r['expected_same']:.1f} of its "
                     f"{_n(r['with_replication'], 'rated cell', 'rated cells')} to hold"
                     + (f" (at {r['a_seeds']} seeds an upper estimate)" if few_seeds(r.get("a_seeds")) else "") + f", and {r['same']} did")
    if r["with_replication_same_organisms"]:
        parts.append(f"for a rerun on the same organism builds they expected {r['expected_same_organisms']:.1f} of "
                     f"{r['with_replication_same_organisms']}, and {r['same_same_organisms']} did")
    if r["moved"]:
        part = (f"of the {r['moved']} that moved, {r['moved_provisional']} "
                f"{'was' if r['moved_provisional'] == 1 else 'were'} provisional in A (replication below "
                f"{r['power']})")
        if r["moved_unrated"]:
            part += f" and {r['moved_unrated']} unrated"
        parts.append(part)
    if r["held_provisional"]:
        parts.append(f"{r['held_provisional']} provisional in A held")
    if r["only_a"] or r["only_b"]:
        parts.append(f"{_n(r['only_a'], 'cell', 'cells')} only in A, {r['only_b']} only in B")
    return "; ".join(parts)
