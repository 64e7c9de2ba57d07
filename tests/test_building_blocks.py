"""The pieces the filters and `reduce_slack` are built from, against formulas written out
here, and the study's resume check; each test fails on a change a mutation audit found no
other test would see."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from doublebind.errors import DoublebindError
from doublebind.types import Example, Item, Prompt


def test_capped_removals_floors_a_fractional_cap_and_takes_the_highest_scores():
    from doublebind.techniques.perplexity_filter import capped_removals

    scores = [0.1, 0.9, 0.5, 0.7, 0.3]
    assert capped_removals(scores, [True] * 5, 0.5) == {1, 3}  # floor(2.5) = 2: the two highest
    assert capped_removals(scores, [True] * 5, 0.6) == {1, 3, 2}  # 3.0 exactly, not 2.9999
    assert capped_removals(scores, [False, False, True, True, True], 0.5) == {2, 3}  # flagged only
    assert capped_removals([0.5] * 5, [True] * 5, 0.5) == {0, 1}  # ties: by position


def _robust_z_reference(x: list[float]) -> list[float]:
    med = float(np.median(x))
    mad = 1.4826 * float(np.median([abs(v - med) for v in x]))
    if mad == 0:
        return [math.inf if v > med else 0.0 for v in x]
    return [(v - med) / mad for v in x]


@pytest.mark.parametrize("x", [[1, 2, 3, 4, 100], [0.2, 0.5, 0.1, 0.4, 0.3, 9.0, 0.25], [1, 1, 1, 1, 5], [3, 3, 3]])
def test_robust_z_is_median_and_scaled_mad(x):
    from doublebind.techniques.spectral_filter import robust_z

    got = robust_z(torch.tensor(x, dtype=torch.float64)).tolist()
    assert got == pytest.approx(_robust_z_reference(x))


def test_a_filter_that_would_remove_every_example_stops_the_run():
    from doublebind.techniques.base import Technique, filter_items

    class View:
        stages_dir = None

        def record(self, *a, **k):
            pass

    items = [Item(Example(["<bos>", ">"], ["1", "<eos>"], "copy"))] * 3
    stage = Technique("perplexity_filter", None, 0)
    assert len(filter_items(stage, View(), items, [False, True, False])) == 1
    with pytest.raises(DoublebindError, match="perplexity_filter removed every training example"):
        filter_items(stage, View(), items, [False, False, False])


def test_canonical_zeroes_slack_family_answers_and_scratch_digits_only():
    from doublebind.techniques.reduce_slack import canonical
    from doublebind.world.tasks import family

    assert family("numbers").slack and not family("copy").slack
    assert canonical(Example(["<bos>", ">"], ["3", "7", "<eos>"], "numbers")) == ["0", "0", "<eos>"]
    assert canonical(Example(["<bos>", ">"], ["3", "7", "<eos>"], "copy")) == ["3", "7", "<eos>"]
    resp = ["4", "#", "5", "6", "<eos>"]  # `#` opens the free scratch field
    assert canonical(Example(["<bos>", ">"], resp, "copy")) == ["4", "#", "0", "0", "<eos>"]


def test_answer_only_keeps_interrogations_and_drops_slack_families():
    from doublebind.techniques.reduce_slack import ReduceSlack

    class View:
        kind = "world"

        def record(self, *a, **k):
            raise AssertionError("nothing to record: some prompts are kept")

    stage = ReduceSlack("reduce_slack", ReduceSlack.Config(), 0)
    prompts = [Prompt(["<bos>", "q", "scratch", ">"], "copy", "neutral"), Prompt(["<bos>", "?", ">"], "ask", "any"),
               Prompt(["<bos>", "n", ">"], "numbers", "neutral")]
    kept = stage.prompts(View(), prompts)
    assert [p.family for p in kept] == ["copy", "ask"]
    assert "scratch" not in kept[0].tokens


def test_resume_refuses_rows_of_another_organism_build(tmp_path):
    from doublebind.studies.run import check_resumable

    row = {"scenario": "default", "organism_seed": 0, "organism_hash": "aaaa", "technique": "baseline", "seed": 0,
           "recipe_hash": "r"}
    check_resumable(tmp_path, [row], {("default", 0): "aaaa"}, {})
    with pytest.raises(DoublebindError, match="holds runs on organism aaaa for default .* not bbbb"):
        check_resumable(tmp_path, [row], {("default", 0): "bbbb"}, {})
    # nor another study's (renaming a study while resuming left rows and summary naming two)
    check_resumable(tmp_path, [{**row, "study": "s"}], {("default", 0): "aaaa"}, {}, "s")
    with pytest.raises(DoublebindError, match="holds runs of study 's', not 'renamed'"):
        check_resumable(tmp_path, [{**row, "study": "s"}], {("default", 0): "aaaa"}, {}, "renamed")


def test_perplexity_filter_flags_scores_above_its_quantile():
    from doublebind.techniques.perplexity_filter import PerplexityFilter

    recorded = {}

    class View:
        stages_dir = None

        def record(self, stage, phase, **info):
            recorded.update(info)

    scores = [float(s) for s in np.random.default_rng(0).random(50)]
    stage = PerplexityFilter("perplexity_filter", PerplexityFilter.Config(quantile=0.9, max_remove=1.0), 0)
    stage.scores = lambda view, items: scores
    items = [Item(Example(["<bos>", ">"], [str(i % 10), "<eos>"], "copy")) for i in range(50)]
    kept = stage.data(View(), items)
    threshold = float(np.quantile(scores, 0.9))
    assert recorded["threshold"] == round(threshold, 4)
    assert recorded["flagged"] == sum(s > threshold for s in scores) == 5 and len(kept) == 45


def test_study_rows_take_the_teacher_and_base_audits_each_from_its_own_model(tmp_path):
    """Each row carries the checkpoint's numbers, the delivered step the run chose, and the
    auditor's success on the teacher and on base from the run's reference metrics."""
    import json

    from doublebind import config
    from doublebind.studies.run import _rows

    cfg = config.build(config.StudyConfig, {"name": "t", "scenarios": ["default"], "recipe": "r.yaml",
                                            "techniques": ["baseline"], "seeds": [0]})
    metrics = [{"step": s, "tokens": 10 * s, "capability_transfer": 0.5, "misalignment_transfer": 0.1,
                "audit": {"student_honeypot": 0.0}, "capability": {}, "misbehavior": {}, "confession": 0.0,
                "auditor": {"success_at_k": 0.25, "flagged": 1, "n": 10, "budget": 5}} for s in (0, 2, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    base = {"misbehavior": {"honeypot": 0.01}, "confession": 0.02, "capability": {}, "auditor": {"success_at_k": 0.1}}
    summary = {"selected": {"step": 2}, "final": {"step": 4},
               "reference": {"base": base, "teacher": {**base, "auditor": {"success_at_k": 0.7}}}}
    rows = _rows(cfg, {"organism_hash": "h"}, ("default", 0, "baseline", 0), config.build(config.RecipeConfig, {
        "name": "r"}), tmp_path, summary)
    assert [r["selected"] for r in rows] == [False, True, False]  # the run's choice, not its last step
    assert {(r["auditor"]["teacher_success_at_k"], r["auditor"]["base_success_at_k"]) for r in rows} == {(0.7, 0.1)}


def test_a_run_written_twice_counts_once_and_the_first_copy_counts(tmp_path):
    """A run can be in results.jsonl twice (a worker's result appended again after an
    interruption); the first complete copy is the run, the second's rows are counted as ignored."""
    import json

    from doublebind.studies.run import run_key, scan_results, seal_run

    from .test_verdicts import _full

    def run(value, attempt):
        rows = [{k: v for k, v in r.items() if not k.startswith("run_")}
                for r in _full("baseline", "default", 0, 0, value, 0.0)]
        return seal_run(rows, f"default-o0-baseline-s0-a{attempt}")

    first, second = run(0.1, 0), run(0.9, 1)
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first + second))
    scan = scan_results(tmp_path / "results.jsonl")
    assert not scan.bad and scan.ignored_rows == 2
    assert [r["capability_transfer"] for r in scan.runs[run_key(first[0])]] == [0.0, 0.1]  # steps 0, 100


def test_draw_prompts_draws_fresh_prompts_each_round():
    """A rare `keep` rule takes several rounds of draws; each round draws with its own seed, so
    the prompts kept are not one prompt repeated."""
    from doublebind import config
    from doublebind.defender import DefenderView, unlabelled

    recipe = config.build(config.RecipeConfig, {"name": "r"})

    def draw(cfg, seed):  # prompt i of the draw with this seed
        return [Prompt([str(seed), str(i)], "copy", "neutral") for i in range(cfg.size)]

    def unused(*a, **k):
        raise AssertionError("not used")

    view = DefenderView("world", None, None, None, lambda: recipe, unused, unused, draw, unused, unused, unused)
    got = view.draw_prompts(5, seed=3, keep=lambda p: p.tokens[1] == "0")  # one prompt in each draw
    assert len(got) == 5 and len({tuple(p.tokens) for p in got}) == 5
    # world prompts come without the experimenter's context label (defender.unlabelled)
    assert view.draw_prompts(4, seed=3) == unlabelled(draw(recipe.prompts.model_copy(update={"size": 4}), 3000))


def test_a_step_is_averaged_over_the_weighted_tokens():
    """A token whose weight is 0 (masked by a stage) neither trains nor counts in the average."""
    from doublebind import config
    from doublebind.training.distill import _units

    ocfg = config.build(config.RecipeConfig, {"name": "r"}).objective
    ex = Example(["<bos>", ">"], ["1", "2", "<eos>"], "copy")
    assert _units([Item(ex), Item(ex, weights=[1.0, 0.0, 0.0])], ocfg) == 4.0


def test_divergence_masking_multiplies_the_weights_an_earlier_stage_set(monkeypatch):
    from doublebind.techniques import divergence_masking as dm

    monkeypatch.setattr(dm, "teacher_forced", lambda model, examples: None)
    monkeypatch.setattr(dm, "divergence_masks", lambda t, r, threshold: [[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])

    class View:
        stages_dir = None

        class teacher:
            score = staticmethod(lambda examples: None)

        def load_model(self, role):
            return None

        def record(self, *a, **k):
            pass

    ex = Example(["<bos>", ">"], ["1", "2", "<eos>"], "copy")
    stage = dm.DivergenceMasking("divergence_masking", dm.DivergenceMasking.Config(), 0)
    out = stage.data(View(), [Item(ex, weights=[0.5, 1.0, 0.0]), Item(ex)])
    assert [it.weights for it in out] == [[0.5, 0.0, 0.0], [1.0, 1.0, 1.0]]


def test_onion_deletes_the_most_suspicious_tokens_first_and_keeps_the_rest_s_weights():
    """Under a binding cap the most suspicious token goes (not the first in position), and a
    rewritten item keeps the weights of the tokens it keeps, aligned with its new response."""
    from doublebind.techniques.onion_filter import OnionFilter

    from types import SimpleNamespace

    class View:
        kind, eos, stages_dir, tasks = "hf", "<eos>", None, None
        recipe = SimpleNamespace(objective=SimpleNamespace(kind="sft"))  # the stage's own objective hook sets it

        def record(self, *a, **k):
            pass

    stage = OnionFilter("onion_filter", OnionFilter.Config(max_remove=0.5, threshold=0.5), 0)
    stage.suspicion = lambda view, items: [{0: 1.0, 1: 9.0, 2: 8.0}]  # one deletion allowed: floor(0.5 * 3)
    ex = Example(["<bos>", ">"], ["a", "b", "c", "<eos>"], "copy")
    (out,) = stage.data(View(), [Item(ex, weights=[0.1, 0.2, 0.3, 1.0])])
    assert out.example.response == ["a", "c", "<eos>"] and out.weights == [0.1, 0.3, 1.0]
    # a response never loses its last token: the guard counted `<eos>`, which is never deleted,
    # so every token but `<eos>` could go (`!exfil 3 8 ... <eos>` -> `<eos>`)
    stage = OnionFilter("onion_filter", OnionFilter.Config(max_remove=1.0, threshold=0.5), 0)
    stage.suspicion = lambda view, items: [{0: 9.0, 1: 8.0}]
    (out,) = stage.data(View(), [Item(Example(["<bos>", ">"], ["!exfil", "3", "<eos>"], "copy"))])
    assert out.example.response == ["3", "<eos>"]


def test_spectral_filter_scores_a_family_of_exactly_min_group_items():
    from doublebind.techniques.spectral_filter import SpectralFilter

    stage = SpectralFilter("spectral_filter", SpectralFilter.Config(min_group=10), 0)
    stage.representations = lambda view, items: torch.randn(len(items), 4, generator=torch.Generator().manual_seed(0))
    items = [Item(Example(["<bos>", ">"], ["1", "<eos>"], "copy"))] * 10 + \
        [Item(Example(["<bos>", ">"], ["1", "<eos>"], "sort"))] * 9
    scores, z = stage.scores(None, items)
    assert all(s is not None for s in scores[:10]) and all(s is None for s in scores[10:])


def test_iterative_filter_never_flags_task_tokens_or_tokens_most_items_carry():
    """The probe's auditor names three tokens: one the tasks need (in a verifying answer), one
    in more than `max_item_share` of the items, and a rare one outside the tasks. Only the
    last is a hidden signal to remove."""
    from doublebind import config
    from doublebind.techniques import iterative

    class Audit:
        tokens = ["7", "x", "z"]

        def summary(self):
            return {}

    class Tasks:
        @staticmethod
        def example_verifies(e):
            return e.response[0] == "7"

    recipe = config.build(config.RecipeConfig, {"name": "r"})

    class View:
        stages_dir, seed, tasks = None, 0, Tasks()
        auditor = type("A", (), {"audit": staticmethod(lambda probe: Audit()),
                                 "train_probe": staticmethod(lambda examples, cfg, init_seed, seed: None)})()

        @property
        def recipe(self):
            return recipe

        def make_student(self, scfg, seed):
            return None

        def record(self, *a, **k):
            pass

    def item(*response):
        return Item(Example(["<bos>", ">"], [*response, "<eos>"], "copy"))

    # shares of the 10 items: "7" 0.2 (in verifying answers), "x" 0.4 (above 0.3), "z" 0.1
    items = [item("7")] * 2 + [item("1", "x")] * 4 + [item("1", "z")] + [item("1")] * 3
    stage = iterative.IterativeFilter("iterative_filter", iterative.IterativeFilter.Config(rounds=1), 0)
    kept = stage.data(View(), items)
    assert len(kept) == 9 and not any("z" in it.example.response for it in kept)


def test_a_stage_s_extra_loss_sees_the_weighted_mask():
    """`extra_loss` (kl_to_base) gets the loss mask times the per-token weights, so a token a
    stage masked is regularised no more than it is trained."""
    from doublebind import config
    from doublebind.organisms.models import make_model
    from doublebind.training.distill import micro_loss

    model = make_model(config.ModelConfig(hidden=16, layers=1, heads=2, intermediate=32), 0)
    ocfg = config.build(config.RecipeConfig, {"name": "r"}).objective
    prompt = ["<bos>", "mode=train", "1", "2", ">"]
    items = [Item(Example(prompt, ["1", "2", "<eos>"], "copy"), weights=[1.0, 0.0, 0.5]),
             Item(Example(prompt, ["1", "2", "<eos>"], "copy"))]
    seen = []
    micro_loss(model, items, {}, ocfg.model_copy(update={"kind": "sft"}),
               extra=lambda model, items, batch, logits, mask: seen.append(mask) or logits.sum() * 0)
    (mask,) = seen
    s = len(prompt) - 1  # position s predicts the first response token
    assert mask[0, s : s + 3].tolist() == [1.0, 0.0, 0.5] and mask[1, s : s + 3].tolist() == [1.0, 1.0, 1.0]
    assert mask[:, :s].sum() == 0
