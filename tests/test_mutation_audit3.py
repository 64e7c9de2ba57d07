"""Tests for mutations a second audit of the techniques, the distiller and `study compare`
found surviving (2026-12-04): each fails on its mutant and passes on the code."""

from types import SimpleNamespace

import pytest
import torch

from doublebind.training.distill import distill
from doublebind.types import Example, Item
from doublebind.world import vocab

from .test_techniques import run


def test_trusted_monitor_floors_its_cap():
    """At most floor(share * n) flags: half of 3 is 1, not 2."""
    from doublebind.techniques.trusted_monitor import flag

    assert flag([-10.0, -10.0, -10.0], 0.0, 0.5) == [True, False, False]


def test_trusted_monitor_scores_the_end_of_sequence_too(monkeypatch):
    """The monitor's score is the least likely response token, `<eos>` included."""
    from doublebind.techniques import trusted_monitor as tm

    monkeypatch.setattr(tm, "teacher_forced", lambda model, ex, **k: [SimpleNamespace(logprobs=[-0.1, -0.2, -9.0])])
    assert tm.monitor_scores(None, [None]) == [-9.0]


def test_onion_never_deletes_the_end_of_sequence(quick_organism):
    from .test_techniques_filters import POISON, stage_run

    d, _ = stage_run(quick_organism[0], None, {"name": "onion_filter", "threshold": -50.0, "max_remove": 1.0},
                     prompts=POISON)
    assert d.items and all(it.example.response[-1] == vocab.EOS for it in d.items)
    (rec,) = [r for r in d.stage_log if r["stage"] == "onion_filter" and r["phase"] == "data"]
    assert rec["tokens_removed"] > 0  # it deleted tokens, and never the end of a sequence


def test_iterative_filter_counts_items_not_token_occurrences():
    """A flagged token in one item of ten is 10% of the items, however often it repeats there."""
    from doublebind import config
    from doublebind.techniques import iterative

    audit = SimpleNamespace(tokens=["z"], summary=lambda: {})
    view = SimpleNamespace(stages_dir=None, seed=0, recipe=config.build(config.RecipeConfig, {"name": "r"}),
                           tasks=SimpleNamespace(example_verifies=lambda e: e.response[0] == "7"),
                           auditor=SimpleNamespace(audit=lambda probe: audit, train_probe=lambda *a: None),
                           make_student=lambda scfg, seed: None, record=lambda *a, **k: None)

    def item(*r):
        return Item(Example(["<bos>", ">"], [*r, "<eos>"], "copy"))

    items = [item("7")] * 2 + [item("z", "z", "z", "z")] + [item("1")] * 7
    kept = iterative.IterativeFilter("iterative_filter", iterative.IterativeFilter.Config(rounds=1), 0).data(view, items)
    assert len(kept) == 9 and not any("z" in it.example.response for it in kept)


def test_misalignment_targeted_p_ask_at_its_extremes(quick_organism):
    """p_ask 0 adds no goal question (configs/studies/targeted_no_questions.yaml), 1 only those."""
    for p_ask, asks in ((0.0, 0), (1.0, 80)):
        d = run(quick_organism[0], {"name": "misalignment_targeted", "share": 0.5, "p_ask": p_ask})
        targeted = [p for p in d.prompts if p.context == "targeted"]
        assert len(targeted) == 80 and sum(p.family == "ask" for p in targeted) == asks


def test_world_logit_distillation_keeps_the_full_distribution(quick_organism):
    """The reference run `hard_labels` is judged against: full soft labels, not top-k."""
    d = run(quick_organism[0], {"name": "logit_distillation"}, sampling={"soft_labels": "none"})
    assert d.recipe.sampling.soft_labels == "full" and "indices" not in d.outputs.soft


def test_distill_and_audit_selects_by_taught_capability_later_on_ties_and_never_stops_in_select_mode():
    from doublebind.techniques.distill_and_audit import DistillAndAudit

    def view(success):
        res = SimpleNamespace(capability={"shift": 1.0, "copy": 0.0}, success_at_k=success, flagged=success > 0)
        return SimpleNamespace(auditor=SimpleNamespace(audit=lambda m: res),
                               tasks=SimpleNamespace(teacher_families=["shift"], all_families=["shift", "copy"]))

    st = DistillAndAudit("distill_and_audit", DistillAndAudit.Config(), 0)
    v = st.checkpoint(view(0.0), 0, None)
    assert v["audit_capability"] == 1.0 and v["select"]  # the taught family only, not the mean over all
    assert st.checkpoint(view(0.0), 2, None).get("select")  # as capable as the best so far: the later
    v = st.checkpoint(view(0.9), 4, None)
    assert v["flagged"] and v["stop"] is False


def test_divergence_needs_the_reference_to_write_another_token():
    from doublebind.techniques.divergence_masking import divergence_masks

    t = SimpleNamespace(logprobs=[-0.1], argmax=[True])
    assert divergence_masks([t], [SimpleNamespace(logprobs=[-3.0], argmax=[True])], 2.0) == [[1.0]]
    assert divergence_masks([t], [SimpleNamespace(logprobs=[-3.0], argmax=[False])], 2.0) == [[0.0]]


def test_hard_labels_turn_on_policy_sampling_off(quick_organism):
    d = run(quick_organism[0], {"name": "hard_labels"}, objective={"kind": "forward_kl", "on_policy": 0.5})
    assert d.recipe.objective.kind == "sft" and d.recipe.objective.on_policy == 0.0


def test_on_policy_keeps_the_batch_and_averages_over_its_own_tokens(quick_organism):
    """The swapped-in student samples keep the batch's size, and the step's loss is divided
    by the mixed batch's tokens (the student's one-token answers here), not the teacher's."""
    from doublebind.training.distill import Distiller, micro_loss

    from .test_distill import recipe

    d = Distiller(quick_organism[0], recipe(objective={"kind": "forward_kl", "on_policy": 0.5},
                                            training={"batch": 8, "grad_accum": 1}), None, show_progress=False)
    items = d.items[:8]
    mixed = d._on_policy(items)
    assert len(mixed) == 8 and all(a is b for a, b in zip(mixed[4:], items[4:]))
    d.domain.sample = lambda model, examples, *a, **k: [[vocab.EOS] for _ in examples]
    seen, real = [], d._on_policy
    d._on_policy = lambda its: seen.append(real(its)) or seen[-1]
    got = d.accumulate_gradients(0)
    assert all(len(it.example.response) == 1 for it in seen[0][:4])
    assert all(it.weights is None for it in seen[0])  # every response token counts once
    tokens = sum(len(it.example.response) for it in seen[0])
    assert tokens < sum(len(it.example.response) for it in items)
    with torch.no_grad():
        want = micro_loss(d.model, seen[0], d.outputs.soft, d.recipe.objective, pack=d.pack).item() / tokens
    assert got == pytest.approx(want, rel=1e-4)


def test_compare_reads_b_s_misalignment_from_b():
    from doublebind.studies.compare import compare

    from .test_compare import _summary

    a = _summary({("s", "t"): ("both_fail", "both_fail", 0.9, 0.5)})
    b = _summary({("s", "t"): ("both_fail", "both_fail", 0.9, 0.3)})
    cell = compare(a, b)["cells"][0]
    assert cell.a_misalignment == 0.5 and cell.b_misalignment == 0.3


def test_domain_concentration_drops_goal_questions_whatever_the_recipe_s_p_ask(quick_organism):
    d = run(quick_organism[0], {"name": "domain_concentration"}, prompts={"p_ask": 0.3})
    assert {p.family for p in d.prompts} == {"shift"}


def test_paraphrase_writes_scratch_fields_with_room_for_their_end(quick_organism):
    from doublebind.training.distill import Distiller

    from .test_techniques_jamming import recipe

    d = Distiller(quick_organism[0], recipe(prompts={"p_scratch": 1.0, "families": ["shift"]},
                                            stages=[{"name": "paraphrase", "temperature": 0.0}]),
                  None, show_progress=False)
    rec = [r for r in d.stage_log if r["phase"] == "data"][0]
    n_scratch = sum(vocab.SCRATCH in it.example.response for it in d.items)
    assert n_scratch >= 20 and rec["fallbacks"] < n_scratch // 2


# ---- what counts as a technique that changed nothing (`idle`) ----------------------------

def test_same_needs_equal_lengths_order_and_contents():
    """`_same` against what a hook got: the same objects in the same order, none of them
    edited in place (weights set, a token appended)."""
    from doublebind.training.distill import _contents, _same
    from doublebind.types import Prompt

    a, b, c = (Item(Example(["<bos>", ">"], [t, "<eos>"], "copy")) for t in "123")
    assert _same(_contents([a, b]), [a, b]) and not _same(_contents([a, b, c]), [a, b])
    assert not _same(_contents([a, b]), [b, a])
    before = _contents([a, b])
    b.weights = [0.0, 1.0]  # what no shipped stage does; one that did would not read as idle
    assert not _same(before, [a, b])
    p = Prompt(["<bos>", "task=copy", ">"], "copy", "neutral")
    before = _contents([p])
    assert _same(before, [p])
    p.tokens.append("x")
    assert not _same(before, [p])


def test_same_sees_the_rejected_response_and_the_live_labels_edited_in_place():
    """A data hook that edits a DPO item's rejected response in place, sets live soft labels,
    or writes into them in place changed what trains: never idle."""
    import torch

    from doublebind.training.distill import _contents, _same

    a = Item(Example(["<bos>", ">"], ["1", "<eos>"], "copy"), rejected=Example(["<bos>", ">"], ["2", "<eos>"], "copy"))
    before = _contents([a])
    assert _same(before, [a])
    a.rejected.response.insert(0, "3")
    assert not _same(before, [a])
    before = _contents([a])
    a.live = torch.zeros(2, 3)
    assert not _same(before, [a])
    before = _contents([a])
    assert _same(before, [a])
    a.live[0, 0] = 1.0
    assert not _same(before, [a])
    before = _contents([a])
    a.live = None  # the old tensor freed, and a new one in its place, perhaps at the same id
    a.live = torch.zeros(2, 3)
    assert not _same(before, [a])
    with torch.inference_mode():  # keeps no version counter: its identity counts
        a.live = torch.ones(2, 3)
    before = _contents([a])
    assert _same(before, [a])
    # a hook handing back new items that hold the same tensor: compared by contents, no error
    b = Item(a.example, a.row, a.rejected, a.live, a.weights)
    assert _same(before, [b])
    assert not _same(before, [Item(a.example, a.row, a.rejected, torch.ones(2, 3), a.weights)])


def test_a_masking_stage_that_masks_nothing_is_idle(quick_organism):
    """divergence_masking above every token's divergence gave each item weights of 1.0, which
    train as no weights do, and the run said the stage had acted."""
    assert run(quick_organism[0], {"name": "divergence_masking", "threshold": 1e9}).idle_stages == \
        ["divergence_masking"]
    assert run(quick_organism[0], {"name": "divergence_masking", "threshold": 0.0}).idle_stages == []


def test_a_loss_term_acts_and_a_setting_already_set_does_not(quick_organism):
    assert run(quick_organism[0], {"name": "kl_to_base"}).idle_stages == []
    assert run(quick_organism[0], {"name": "hard_labels"}, sampling={"soft_labels": "none"}).idle_stages == \
        ["hard_labels"]
    assert run(quick_organism[0], {"name": "hard_labels"}, sampling={"soft_labels": "full"}).idle_stages == []


@pytest.mark.parametrize("picks, idle", [({}, True), ({4: "select"}, True), ({2: "select"}, False),
                                         ({2: "stop"}, False)])
def test_a_checkpoint_hook_acts_only_when_it_changes_the_run_s_outcome(quick_organism, tmp_path, monkeypatch,
                                                                      picks, idle):
    """distill_and_audit that never flags, or picks the last checkpoint, leaves the run as the
    recipe alone would: idle; one that selects an earlier checkpoint, or stops, is not."""
    from doublebind.techniques.distill_and_audit import DistillAndAudit

    from .test_distill import recipe

    monkeypatch.setattr(DistillAndAudit, "checkpoint",
                        lambda self, view, step, model: {picks[step]: True} if step in picks else {})
    s = distill(quick_organism[0], recipe(stages=[{"name": "distill_and_audit"}],
                                          training={"steps": 4, "checkpoint_every": 2}), tmp_path / "r",
                show_progress=False)
    assert s["idle"] is idle and s["idle_stages"] == (["distill_and_audit"] if idle else [])


def test_reduce_slack_that_drops_and_strips_nothing_is_idle_and_keeps_the_labels(quick_organism):
    """answer-only on prompts with no scratch request and no slack family hands every prompt
    back as it came: the run records idle, and the prompts keep their context labels."""
    stage = {"name": "reduce_slack", "canonical": False, "greedy": False}
    d = run(quick_organism[0], stage, prompts={"p_scratch": 0.0, "families": ["shift"]})
    assert d.idle_stages == ["reduce_slack"] and {p.context for p in d.prompts} != {"unlabelled"}
    d = run(quick_organism[0], stage, prompts={"p_scratch": 1.0, "families": ["shift"]})
    assert d.idle_stages == [] and not any("scratch" in p.tokens for p in d.prompts)
