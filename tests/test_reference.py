"""The committed reference (docs/results) still describes what the code builds: its
organisms' build-code hash is the current one, and each organism's hash is what its
scenario preset at its organism seed hashes to now. When this fails, regenerate the
reference (docs/results/README.md gives the command) in the same change."""

import json
from pathlib import Path

from doublebind import config
from doublebind.organisms.build import code_version
from doublebind.organisms.kinds import kind_of_config

REFERENCE = Path(__file__).parents[1] / "docs" / "results" / "summary.json"
REGENERATE = "regenerate docs/results (see docs/results/README.md)"


def _summary() -> dict:
    summary = json.loads(REFERENCE.read_text())
    assert summary.get("provenance"), f"{REFERENCE} records no provenance (an older reference); {REGENERATE}"
    return summary


def test_the_reference_was_built_by_the_current_organism_code():
    prov = _summary()["provenance"]
    assert prov["commit"] and prov["machine"]["cpus"], "the reference names no commit or machine"
    versions = {o["code_version"] for o in prov["organisms"]}
    assert versions == {code_version()}, (
        f"the organism build code changed since the reference (reference {sorted(versions)}, now "
        f"{code_version()}); {REGENERATE}")


def test_each_reference_organism_is_what_its_scenario_builds_now():
    summary = _summary()
    for scenario, data in summary["scenarios"].items():
        for seed, recorded in data["organisms"].items():
            cfg = config.load(preset=scenario, expect="organism", merge={"seed": int(seed)})
            assert kind_of_config(cfg).organism_hash(cfg) == recorded, (
                f"{scenario} organism seed {seed}: the reference has {recorded}, the preset and code now build "
                f"{kind_of_config(cfg).organism_hash(cfg)}; {REGENERATE}")
