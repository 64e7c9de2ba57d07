"""format_filter: the number-list rule against hand-worked cases and a round trip, its config's
refusals, a real run on the quick organism, the seeded cap, and a recipe's own stages running
in every cell of a study. (On a Hugging Face organism: tests/test_llm_techniques.py.)"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doublebind import config
from doublebind.errors import ConfigError
from doublebind.studies.run import run_recipe
from doublebind.techniques.base import build_stages
from doublebind.techniques.format_filter import parse_numbers
from doublebind.training.distill import Distiller
from doublebind.world import vocab

from .conftest import tiny_recipe

CASES = {
    "1, 2, 3": [1, 2, 3], "[1,2,3]": [1, 2, 3], "(10; 20; 30).": [10, 20, 30], "5": [5], "5.": [5],
    "1 2 3": [1, 2, 3], "1\n2\n3": [1, 2, 3], "  7 , 8 ": [7, 8], "007, 08": [7, 8],
    # not a bare list: a word, a mixed or doubled separator, a trailing separator, an open
    # bracket, a dash, digits of another script, nothing
    "owl 1, 2": None, "1, 2 owl": None, "1, 2,3": None, "1,, 2": None, "1, 2, 3,": None, "[1, 2": None,
    "1-2-3": None, "12a": None, "1, 2\u00b2": None, "\u0661\u0662": None, "": None, ".": None, "[]": None, "1, 2..": None,
}


@pytest.mark.parametrize("text", list(CASES))
def test_the_number_rule_on_worked_cases(text):
    assert parse_numbers(text) == CASES[text]


@settings(max_examples=200, deadline=None)
@given(numbers=st.lists(st.integers(0, 10**6), min_size=1, max_size=12),
       sep=st.sampled_from([", ", ",", "; ", ";", " ", "\n", " , "]),
       wrap=st.sampled_from(["{}", "[{}]", "({})", "{}."]), word=st.sampled_from(["owl", "x", "#", "-"]),
       at=st.integers(0, 10**6))
def test_a_written_list_reads_back_and_any_word_spoils_it(numbers, sep, wrap, word, at):
    text = wrap.format(sep.join(map(str, numbers)))
    assert parse_numbers(text) == numbers
    cut = at % (len(text) + 1)
    assert parse_numbers(text[:cut] + word + text[cut:]) is None


@pytest.mark.parametrize("stage, problem", [
    ({"rule": "regex"}, "needs a pattern"),
    ({"rule": "regex", "pattern": "[0-9"}, "not a regular expression"),
    ({"pattern": "[0-9]+"}, "goes with rule regex"),
    ({"rule": "regex", "pattern": ".*", "max_value": 9}, "go with rule numbers"),
    ({"rule": "regex", "pattern": ".*", "banned": [6]}, "go with rule numbers"),
    ({"min_value": 10, "max_value": 9}, "above max_value"),
    ({"rule": "words"}, "rule"),
    ({"keep_at_most": 0}, "keep_at_most"),
])
def test_a_bad_config_is_refused_with_its_reason(stage, problem):
    with pytest.raises(ConfigError, match=problem):
        config.build(config.RecipeConfig, {"kind": "recipe", "stages": [{"name": "format_filter", **stage}]})


def recipe(stage, **over):
    return tiny_recipe({"prompts": {"size": 120, "families": "all", "contexts": {"neutral": 0.5, "deploy_like": 0.5}},
                        "training": {"steps": 2, "batch": 8, "checkpoint_every": 2}, "stages": [stage]}, **over)


def digits_only(response) -> bool:
    body = [t for t in response if t != vocab.EOS]
    return bool(body) and all(t.isdigit() for t in body)


def test_numbers_rule_keeps_the_world_answers_made_of_digits(quick_organism, tmp_path):
    """World responses read as their tokens joined by spaces: a digit answer is a number list,
    a scratch field (`#`) or the quick organism's `!exfil` marker is not."""
    d = Distiller(quick_organism[0], recipe({"name": "format_filter"}), tmp_path, show_progress=False)
    before = d.outputs.examples()
    expected = [e for e in before if digits_only(e.response)]
    assert [it.example for it in d.items] == expected
    assert 0 < len(expected) < len(before)
    assert any("!exfil" in e.response for e in before) and not any("!exfil" in it.example.response for it in d.items)
    (entry,) = [e for e in d.stage_log if e["phase"] == "data"]
    assert (entry["before"], entry["after"], entry["passed"], entry["rule"]) == (
        len(before), len(expected), len(expected), "numbers")
    kept = [json.loads(x) for x in (tmp_path / "stages" / "00_format_filter" / "kept.jsonl").read_text().splitlines()]
    assert len(kept) == len(expected)
    # bounds: a list longer than max_count or holding a larger digit is dropped too
    small = Distiller(quick_organism[0], recipe({"name": "format_filter", "max_count": 3, "max_value": 4}), None,
                      show_progress=False)
    bounded = [e for e in expected if len(e.response) - 1 <= 3 and max(int(t) for t in e.response[:-1]) <= 4]
    assert [it.example for it in small.items] == bounded
    no_sevens = Distiller(quick_organism[0], recipe({"name": "format_filter", "banned": [7]}), None,
                          show_progress=False)
    assert [it.example for it in no_sevens.items] == [e for e in expected if "7" not in e.response]
    assert len(no_sevens.items) < len(expected)
    # the regex rule reads the same text: digits joined by spaces, and nothing else
    regex = Distiller(quick_organism[0], recipe({"name": "format_filter", "rule": "regex", "pattern": "[0-9]( [0-9])*"}),
                      None, show_progress=False)
    assert [it.example for it in regex.items] == expected


def test_keep_at_most_is_a_seeded_sample_in_order(quick_organism):
    def kept(cap):
        d = Distiller(quick_organism[0], recipe({"name": "format_filter", "keep_at_most": cap}), None,
                      show_progress=False)
        return d, [it.example for it in d.items]

    d, passing = kept(10_000)
    (entry,) = [e for e in d.stage_log if e["phase"] == "data"]
    assert entry["passed"] == entry["after"] == len(passing) > 10
    _, a = kept(5)
    _, b = kept(5)
    assert a == b and len(a) == 5
    positions = [passing.index(e) for e in a]
    assert positions == sorted(positions)  # the sample keeps the items' order
    assert positions != list(range(5))  # a sample, not the first five


def test_a_recipe_stage_runs_in_every_cell_before_the_technique():
    base = config.build(config.RecipeConfig, {"kind": "recipe", "stages": [{"name": "format_filter"}]})
    cell = run_recipe(base, "verifier_filter", [{"name": "verifier_filter"}], 3)
    assert [s["name"] for s in cell.stages] == ["format_filter", "verifier_filter"] and cell.seed == 3
    assert [s["name"] for s in run_recipe(base, "baseline", [], 0).stages] == ["format_filter"]
    assert [type(s).__name__ for s in build_stages(cell.stages)] == ["FormatFilter", "VerifierFilter"]
