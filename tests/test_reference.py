"""The committed references (docs/results: the demo study, and matrix/: the scenario matrix)
still describe what the code builds: their organisms' build-code hash is the current one, and
each organism's hash is what its scenario preset at its organism seed hashes to now. When
this fails, regenerate the reference (docs/results/README.md and docs/results/matrix/README.md
give the commands) in the same change."""

import json
from pathlib import Path

import pytest

from doublebind import config
from doublebind.organisms.build import code_version
from doublebind.organisms.kinds import kind_of_config

RESULTS = Path(__file__).parents[1] / "docs" / "results"
REFERENCES = {"demo": RESULTS / "summary.json", "matrix": RESULTS / "matrix" / "summary.json"}
REGENERATE = "regenerate it (see its README.md)"


def _summary(which: str) -> dict:
    path = REFERENCES[which]
    assert path.is_file(), f"the {which} reference {path} is missing; {REGENERATE}"
    summary = json.loads(path.read_text())
    assert summary.get("provenance"), f"{path} records no provenance (an older reference); {REGENERATE}"
    return summary


@pytest.mark.parametrize("which", REFERENCES)
def test_the_reference_was_built_by_the_current_organism_code(which):
    prov = _summary(which)["provenance"]
    assert prov["commit"] and prov["machine"]["cpus"], "the reference names no commit or machine"
    versions = {o["code_version"] for o in prov["organisms"]}
    assert versions == {code_version()}, (
        f"the organism build code changed since the {which} reference (reference {sorted(versions)}, now "
        f"{code_version()}); {REGENERATE}")


STUDIES = Path(__file__).parents[1] / "configs" / "studies"  # where the references' study files live


def _scenario_config(which: str, scenario: str, seed: int):
    """The organism config a reference's scenario builds at `seed`: its entry's config file
    (relative to configs/studies/, as in the study file; the matrix's benign twins), else
    the preset of its name."""
    study = json.loads((REFERENCES[which].parent / "study.json").read_text())["config"]
    entry = next((e for e in study.get("scenarios") or [] if isinstance(e, dict) and e.get("name") == scenario), {})
    if entry.get("config"):
        return config.load(STUDIES / entry["config"], expect="organism", merge={"seed": seed})
    return config.load(preset=scenario, expect="organism", merge={"seed": seed})


@pytest.mark.parametrize("which", REFERENCES)
def test_each_reference_organism_is_what_its_scenario_builds_now(which):
    summary = _summary(which)
    for scenario, data in summary["scenarios"].items():
        for seed, recorded in data["organisms"].items():
            cfg = _scenario_config(which, scenario, int(seed))
            assert kind_of_config(cfg).organism_hash(cfg) == recorded, (
                f"{scenario} organism seed {seed}: the {which} reference has {recorded}, the preset and code now build "
                f"{kind_of_config(cfg).organism_hash(cfg)}; {REGENERATE}")


@pytest.mark.parametrize("which", REFERENCES)
def test_validate_counts_the_runs_each_reference_holds(which, capsys):
    """`doublebind validate` on a reference's study (its record's config, as run) states the
    number of runs its results hold: every scenario, organism build, technique or control
    label, twin and seed counted once."""
    from doublebind import cli

    folder = REFERENCES[which].parent
    runs = {(r["scenario"], r["organism_seed"], r["technique"], r["seed"])
            for r in map(json.loads, (folder / "results.jsonl").read_text().splitlines())}
    name = json.loads((folder / "study.json").read_text())["config"]["name"]  # configs/studies/<name>.yaml
    try:
        cli.main(["validate", str(STUDIES / f"{name}.yaml")])
    except SystemExit as e:
        assert e.code in (0, None)
    assert f"; {len(runs)} runs over " in capsys.readouterr().out
