"""Configs: presets validate; malformed configs give a one-line error naming the field."""

import re
from pathlib import Path

import pytest

from doublebind import config
from doublebind.errors import ConfigError

from .conftest import run_cli

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes"


@pytest.mark.parametrize("preset", ["quick", "default"])
def test_presets_validate(preset):
    cfg = config.load(preset=preset)
    assert cfg.name == preset and cfg.kind == "organism"
    # what it holds survives a round trip through its JSON (a card stores it so)
    assert config.build(config.OrganismConfig, cfg.model_dump(mode="json")) == cfg


def test_the_quick_preset_is_the_smaller_build():
    """quick.yaml says it is sized for tests and CI: fewer families, shorter lists, fewer
    training steps and evaluation prompts than `default`."""
    quick, default = config.load(preset="quick"), config.load(preset="default")
    assert set(quick.world.teacher_families) < set(default.world.teacher_families)
    assert set(quick.world.base_families) < set(default.world.base_families)
    assert quick.world.list_length[1] < default.world.list_length[1]
    assert quick.base_training.steps < default.base_training.steps
    assert quick.teacher_training.steps < default.teacher_training.steps
    assert quick.eval.n_prompts < default.eval.n_prompts


def test_overrides_apply_with_yaml_types():
    cfg = config.load(preset="quick", overrides=["seed=7", "world.list_length=[3,3]", "world.entangled=false"])
    assert cfg.seed == 7 and cfg.world.list_length == (3, 3) and cfg.world.entangled is False


@pytest.mark.parametrize(
    "override, field",
    [
        ("bogus=1", "bogus: unknown key"),
        ("world.colour=red", "world.colour: unknown key"),
        ("model.hidden=big", "model.hidden"),
        ("model.hidden=63", "divisible by heads"),
        ("model.hidden=14", "hidden / heads (14 / 2 = 7) must be even"),  # was a RuntimeError at the first step
        ("world.list_length=[5,2]", "world.list_length"),
        ("world.behavior=gossip", "world.behavior: unknown behavior 'gossip'"),
        ("world.teacher_families=[juggle]", "world.teacher_families: unknown family 'juggle'"),
        ("world.base_families=[copy] world.teacher_families=[numbers]", "no slack family"),
        ("world.teacher_families=[copy]", "both in base and teacher"),
        ("verify.teacher_deploy=1.5", "verify.teacher_deploy"),
        ("teacher_training.p_trigger=0.8", "teacher_training.p_trigger"),
        ("base_training.lr=0", "base_training.lr"),
        ("world.target_family=sort", "not a world family"),
        ("kind=galaxy", "unknown config kind"),
    ],
)
def test_malformed_config_names_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        config.load(preset="quick", overrides=override.split())
    msg = str(e.value)
    assert field in msg and "\n" not in msg


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("world: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(bad)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        config.load(preset="huge")
    with pytest.raises(ConfigError, match="not key=value"):
        config.load(preset="quick", overrides=["seed"])


def test_validate_command_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("kind: organism\nname: mine\nworld: {behavior: sabotage, entangled: false}\n")
    ok = run_cli("validate", str(good))
    assert ok.returncode == 0 and "valid organism config" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: organism\nworld: {behaviour: sabotage}\n")
    res = run_cli("validate", str(bad))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"error: {bad}: world.behaviour: unknown key"]
    assert "Traceback" not in res.stderr
    # a value only the world's binding refuses: validate passed it, and the build refused it
    res = run_cli("validate", str(good), "world.favored_user=zed")
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        f"error: {good}: world.favored_user: unknown user 'zed' (known: alice, bob, carol, dave, erin)"], res.stderr
    recipe = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "hard_sft.yaml"
    res = run_cli("validate", str(recipe), "kind=study")  # the error named a key of the file, not the override
    assert res.returncode == 1 and "(the file read as another kind of config, by the override kind=study)" in res.stderr
    zed = tmp_path / "zed.yaml"
    zed.write_text(good.read_text().replace("entangled: false", "entangled: false, favored_user: zed"))
    study = tmp_path / "study.yaml"
    study.write_text(f"kind: study\nname: s\nrecipe: {Path(__file__).resolve().parents[1] / 'configs/recipes/study.yaml'}"
                     f"\norganism: {{config: {zed}}}\ntechniques: [baseline]\nseeds: [0]\n")
    res = run_cli("validate", str(study))
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "the organism of " in res.stderr and "unknown user 'zed'" in res.stderr


def test_every_shipped_study_validates(tmp_path):
    """Each study under configs/ loads and resolves (a shipped file nobody ran would fail here,
    not in a researcher's hands): its recipe, its techniques and options, its organisms'
    configs. The subliminal paper study reads prompts its make_data.py writes (not committed):
    it is checked in a copy of its folder, with the file made as its header says."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    studies = [p for p in sorted(root.rglob("*.yaml")) if "\nkind: study" in "\n" + p.read_text()]
    assert len(studies) >= 14
    from doublebind.studies.run import resolve

    for p in studies:
        if p.name == "paper_study.yaml":
            copy = shutil.copytree(p.parent, tmp_path / p.parent.name)
            (copy / "paper_prompts.jsonl").unlink(missing_ok=True)
            with pytest.raises(ConfigError, match="paper_prompts.jsonl"):
                resolve(copy / p.name, config.load(copy / p.name, expect="study"))
            subprocess.run([sys.executable, str(copy / "make_data.py"), "--paper"], check=True, capture_output=True)
            p = copy / p.name
        cfg = config.load(p, expect="study")
        specs = resolve(p, cfg)  # its organisms' configs and every scenario's recipe load too
        assert cfg.techniques and specs, p


@pytest.mark.parametrize("overrides", [["training.steps=true"], ["training.lr=false"], ["seed=true"],
                                       ["training.checkpoint_every=true"]])
def test_a_boolean_is_not_taken_for_a_number(overrides):
    """pydantic reads true as 1: `steps: true` trained one step and `lr: true` at 1.0."""
    with pytest.raises(ConfigError, match="expected a number, not true/false"):
        config.load(RECIPES / "hard_sft.yaml", overrides, expect="recipe")


def test_a_boolean_in_a_list_of_numbers_is_refused_and_booleans_stay_booleans():
    study = Path(__file__).resolve().parent.parent / "configs" / "studies" / "default.yaml"
    with pytest.raises(ConfigError, match="seeds: expected a number, not true/false"):
        config.load(study, ["seeds=[0,true]"], expect="study")
    assert config.load(study, ["seeds=[0,1]"], expect="study").seeds == [0, 1]
    r = config.load(RECIPES / "hard_sft.yaml", ["training.packing=false", "training.steps=7"], expect="recipe")
    assert r.training.packing is False and r.training.steps == 7


def test_an_error_in_an_overridden_value_names_the_override():
    """The error named only the file, though the bad value came from the command line."""
    with pytest.raises(ConfigError) as e:
        config.load(RECIPES / "hard_sft.yaml", ["training.tracker=bogus"], expect="recipe")
    assert str(e.value).startswith(f"{RECIPES / 'hard_sft.yaml'}: training.tracker: ")
    assert str(e.value).endswith("(set by the override training.tracker=bogus)")
    with pytest.raises(ConfigError) as e:  # set by a parent key's override
        config.load(RECIPES / "hard_sft.yaml", ["training={steps: -1}"], expect="recipe")
    assert str(e.value).endswith("(set by the override training={steps: -1})"), str(e.value)
    with pytest.raises(ConfigError) as e:  # an override of another key is not blamed
        config.load(RECIPES / "hard_sft.yaml", ["training.lr=0.001", "training.tracker=bogus"], expect="recipe")
    assert "training.lr" not in str(e.value)


def test_a_boolean_among_a_mappings_numbers_is_refused():
    with pytest.raises(ConfigError, match="prompts.contexts: expected a number, not true/false"):
        config.load(RECIPES / "study.yaml", ["prompts.contexts={neutral: true, deploy_like: 0.5, any: 0.5}"],
                    expect="recipe")


def test_an_error_in_a_studys_recipe_override_names_the_override():
    """A study's recipe overrides are checked when the study resolves its recipe; the error
    named `recipe_overrides` and the study file, not the command-line override."""
    from doublebind.studies.run import resolve

    study = Path(__file__).resolve().parents[1] / "configs" / "studies" / "default.yaml"
    over = ["recipe_overrides.training.tracker=bogus"]
    with pytest.raises(ConfigError) as e:
        resolve(study, config.load(study, over, expect="study"), over)
    assert str(e.value).startswith(f"{study}: recipe_overrides: training.tracker: ")
    assert str(e.value).endswith("(set by the override recipe_overrides.training.tracker=bogus)")


@pytest.mark.parametrize("sizes, needle", [
    ("hidden: 32, heads: 64", "techniques: stages.1: hidden (32) must be divisible by heads (64) (technique small_student)"),
    ("hidden: 14, heads: 2", "hidden / heads (14 / 2 = 7) must be even"),
])
def test_small_student_sizes_that_make_no_model_fail_with_the_config(sizes, needle):
    """They were internal errors at the stage, mid-study, after other runs had trained."""
    study = Path(__file__).resolve().parent.parent / "configs" / "studies" / "quick.yaml"
    with pytest.raises(ConfigError, match=re.escape(needle)):
        config.load(study, [f"techniques=[baseline, {{name: small_student, {sizes}}}]"])


def test_an_override_into_a_list_of_the_file_is_refused_naming_it():
    """`scenarios.0.organism_seeds=[0]` replaced the matrix's scenario list with a mapping, and
    the error blamed the file's `scenarios` ("Input should be a valid list"), not the override."""
    matrix = Path(__file__).resolve().parents[1] / "configs" / "studies" / "matrix.yaml"
    with pytest.raises(config.ConfigError) as err:
        config.load(matrix, ["scenarios.0.organism_seeds=[0]"], expect="study")
    assert str(err.value) == (f"override 'scenarios.0.organism_seeds=[0]': scenarios is a list in {matrix}, and an "
                              f"override cannot reach inside one; give the whole list (scenarios=[...])")
    # the matrix pairs its scenarios with benign twins: a narrower list leaves its twins out too
    with pytest.raises(config.ConfigError, match="twins: scenario 'default' is not one of the study's scenarios"):
        config.load(matrix, ["scenarios=[beacon]"], expect="study")
    narrowed = config.load(matrix, ["scenarios=[beacon]", "twins=null"], expect="study")
    assert narrowed.scenarios[0].name == "beacon" and narrowed.twins == {}
    # or drops the pairs it leaves out one by one, keeping the others as the file has them
    kept = config.load(matrix, ["scenarios=[default, benign]",
                                "twins={collusion: null, beacon: null, disposition: null, denier: null}"],
                       expect="study")
    assert kept.twins == {"default": "benign"}
