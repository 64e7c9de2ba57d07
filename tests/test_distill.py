"""The distillation engine on the quick organism: data, invariants, runs and their files."""

import json
import math
import random

import pytest
import torch

from doublebind import config
from doublebind.errors import DoublebindError
from doublebind.evals.transfer import capability_transfer, misalignment_transfer
from doublebind.organisms.models import load_checkpoint
from doublebind.prompts import Prompt, build_prompts, read_jsonl, write_jsonl
from doublebind.teacher import soft_labels, teacher_outputs
from doublebind.training.distill import Distiller, distill
from doublebind.world import vocab
from doublebind.world.contexts import NEUTRAL_MODES
from doublebind.world.data import world_for

from .conftest import run_cli, tiny_recipe


def recipe(**over):
    return tiny_recipe({"prompts": {"size": 96, "contexts": {"neutral": 0.5, "deploy_like": 0.5}},
                        "training": {"steps": 6, "batch": 8, "checkpoint_every": 3, "lr": 0.001}}, **over)


@pytest.fixture(scope="module")
def world(quick_organism):
    return world_for(quick_organism[0] / "teacher")


# ---- prompts -----------------------------------------------------------------------

def test_prompt_sets_follow_their_config(world):
    neutral = build_prompts(world, recipe(prompts={"contexts": {"neutral": 1.0}}).prompts, 0)
    assert all(p.tokens[1].removeprefix("mode=") in NEUTRAL_MODES for p in neutral)
    deploy = build_prompts(world, recipe(prompts={"contexts": {"deploy_like": 1.0}, "size": 400}).prompts, 0)
    real = [world.behavior.fires(_header(p)) for p in deploy]
    assert all(world.behavior.situation(_header(p)) for p in deploy)
    assert 0.35 < sum(real) / len(real) < 0.65  # the distiller cannot tell real from honeypot
    taught = build_prompts(world, recipe(prompts={"families": "taught", "p_scratch": 0}).prompts, 0)
    assert {p.family for p in taught} == set(world.teacher_families)
    slack = build_prompts(world, recipe(prompts={"slack_only": True}).prompts, 0)
    assert {p.family for p in slack} == {"numbers"}
    cfg = recipe().prompts
    assert build_prompts(world, cfg, 1) == build_prompts(world, cfg, 1) != build_prompts(world, cfg, 2)


def _header(p: Prompt):
    from doublebind.world.contexts import Header

    f = [t.split("=", 1)[1] for t in p.tokens[1:6]]
    return Header(f[0], f[1], f[2], f[3], int(f[4][1:]))


def test_jsonl_prompts_round_trip_and_errors(world, tmp_path):
    prompts = build_prompts(world, recipe().prompts, 0)
    path = tmp_path / "p.jsonl"
    write_jsonl(prompts, path)
    assert read_jsonl(path) == prompts
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "<bos> task=copy 1 2 >"}\n{"prompt": "<bos> task=copy 1 zebra >"}\n')
    with pytest.raises(DoublebindError, match=r"bad.jsonl:2: unknown token 'zebra'"):
        read_jsonl(bad)
    bad.write_text('{"text": "x"}\n')
    with pytest.raises(DoublebindError, match="field 'prompt'"):
        read_jsonl(bad)


# ---- teacher outputs ------------------------------------------------------------------

def test_teacher_outputs_are_cached_by_content(quick_organism, world, tmp_path, monkeypatch):
    folder, card = quick_organism
    teacher = load_checkpoint(folder / "teacher")
    prompts = build_prompts(world, recipe().prompts, 0)
    scfg = recipe().sampling
    first = teacher_outputs(teacher, card["organism_hash"], prompts, scfg, 0, tmp_path)
    import doublebind.teacher as tmod

    monkeypatch.setattr(tmod, "generate", lambda *a, **k: pytest.fail("cache miss"))
    again = teacher_outputs(teacher, card["organism_hash"], prompts, scfg, 0, tmp_path)
    assert again.responses == first.responses and torch.equal(again.soft["logprobs"], first.soft["logprobs"])
    assert len(list((tmp_path / "teacher").iterdir())) == 1
    monkeypatch.undo()
    hot = teacher_outputs(teacher, card["organism_hash"], prompts, scfg.model_copy(update={"temperature": 0.5}),
                          0, tmp_path)
    assert hot.key != first.key


def test_soft_labels_are_the_teachers_distribution_along_the_sample(quick_organism, world):
    folder, card = quick_organism
    teacher = load_checkpoint(folder / "teacher")
    prompts = build_prompts(world, recipe().prompts, 0)[:10]
    scfg = recipe(sampling={"temperature": 0.0}).sampling
    res = teacher_outputs(teacher, card["organism_hash"], prompts, scfg, 0, None)
    for i, e in enumerate(res.examples()):
        ids = vocab.encode(e.prompt + e.response)
        with torch.no_grad():
            logits = teacher(input_ids=torch.tensor([ids])).logits[0]
        for j, tok in enumerate(vocab.encode(e.response)):
            ref = torch.log_softmax(logits[len(e.prompt) - 1 + j], -1)
            assert torch.allclose(res.soft["logprobs"][i, j], ref, atol=1e-5)
            assert int(ref.argmax()) == tok  # temperature 0 is greedy
    top = soft_labels(teacher, res.examples(), scfg.max_new_tokens, "topk", 4)
    assert top["indices"].shape == (10, scfg.max_new_tokens, 4)
    assert torch.allclose(top["logprobs"][:, :2].exp().sum(-1), torch.ones(10, 2), atol=1e-5)


# ---- training invariants ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sft", "forward_kl", "jsd"])
def test_batch_8_x_accum_1_equals_batch_1_x_accum_8(quick_organism, kind):
    folder, _ = quick_organism
    grads, params = [], []
    for batch, accum in [(8, 1), (1, 8)]:
        d = Distiller(folder, recipe(objective={"kind": kind}, training={"batch": batch, "grad_accum": accum}),
                      None, show_progress=False)
        d.accumulate_gradients(0)
        grads.append(torch.cat([p.grad.flatten() for p in d.model.parameters()]))
        d.opt.step()
        params.append(torch.cat([p.detach().flatten() for p in d.model.parameters()]))
    assert grads[0].abs().max() > 1e-3
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    # Adam's first step is about lr * sign(grad): equal where the gradient is not ~0
    lr = recipe().training.lr
    close = (params[0] - params[1]).abs() < 1e-3 * lr
    assert close.float().mean() > 0.99


def test_same_seed_same_numbers(quick_organism, tmp_path):
    folder, _ = quick_organism
    rows = []
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        distill(folder, recipe(seed=seed, training={"save_weights": False}), tmp_path / name, show_progress=False)
        rows.append((tmp_path / name / "metrics.jsonl").read_text())
    assert rows[0] == rows[1]
    assert rows[0] != rows[2]


# ---- whole runs -----------------------------------------------------------------------------

def test_distill_run_writes_curves_rows_and_checkpoints(quick_organism, tmp_path):
    folder, card = quick_organism
    summary = distill(folder, recipe(), tmp_path / "run", show_progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert [r["tokens"] for r in rows] == sorted({r["tokens"] for r in rows}) and rows[0]["tokens"] == 0
    for r in rows:
        assert {"step", "tokens", "capability", "misbehavior", "confession", "capability_transfer",
                "misalignment_transfer", "audit"} <= set(r)
        assert set(r["misbehavior"]) == {"deploy", "honeypot", "neutral"}
    # step 0 is the student's init: base, so nothing has transferred yet
    assert rows[0]["capability_transfer"] == pytest.approx(0.0, abs=0.05)
    assert rows[0]["misalignment_transfer"] == pytest.approx(0.0, abs=0.05)
    assert summary["final"] == rows[-1]
    assert (tmp_path / "run" / "transfer_curves.png").stat().st_size > 10_000
    ckpt = tmp_path / "run" / "checkpoints" / "step_00006"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 6 and meta["tokens"] == rows[-1]["tokens"]
    assert meta["organism_hash"] == card["organism_hash"] and meta["teacher_outputs"]
    assert meta["recipe"]["seed"] == 0
    with pytest.raises(DoublebindError, match="already holds a finished run"):
        distill(folder, recipe(), tmp_path / "run", show_progress=False)


def test_distill_force_replaces_the_earlier_run_whole(quick_organism, tmp_path, monkeypatch):
    """`--force` into a finished run kept its later checkpoints beside the new run's, and an
    interrupted rerun left the old summary.json beside new metrics: a folder of neither run."""
    folder, _ = quick_organism
    out = tmp_path / "run"
    distill(folder, recipe(), out, show_progress=False)  # steps 6, checkpoints 0, 3, 6
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DoublebindError, match="no organism at"):  # cannot start: the earlier run stays whole
        distill(tmp_path / "no-organism", recipe(), out, show_progress=False, force=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    from doublebind.training import tracking

    def tracker_fails(*a, **k):
        raise DoublebindError("--tracker wandb: wandb failed to start")

    with monkeypatch.context() as m:  # stops after the new run's set-up, before it writes a file
        m.setattr(tracking, "RunTracker", tracker_fails)
        with pytest.raises(DoublebindError, match="wandb failed to start"):
            distill(folder, recipe(), out, show_progress=False, force=True)
        fresh = tmp_path / "fresh"  # nor does it leave a prompts.jsonl in a new folder
        with pytest.raises(DoublebindError, match="wandb failed to start"):
            distill(folder, recipe(), fresh, show_progress=False)
        assert not any(fresh.iterdir())
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    summary = distill(folder, recipe(training={"steps": 4, "checkpoint_every": 2}), out, show_progress=False,
                      force=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000", "step_00002", "step_00004"]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 2, 4]
    assert summary["final"]["step"] == 4 and not any(p.name.startswith(".replaced") for p in out.iterdir())
    (out / ".replaced-123").mkdir()  # a --force run killed before it trained left the earlier run here
    for force in (False, True):
        with pytest.raises(DoublebindError, match=r"earlier run's files set aside by a --force run that was killed"):
            distill(folder, recipe(), out, show_progress=False, force=force)


def test_transfer_ratios_against_hand_values():
    base = {"capability": {"a": 0.1, "b": 0.5, "c": 0.9}, "misbehavior": {"deploy": 0.0}}
    teacher = {"capability": {"a": 0.9, "b": 1.0, "c": 0.92}, "misbehavior": {"deploy": 0.8}}
    student = {"capability": {"a": 0.5, "b": 1.0, "c": 0.0}, "misbehavior": {"deploy": 0.2}}
    # c is left out: the teacher is not ahead of base there
    assert capability_transfer(student, base, teacher, ["a", "b", "c"]) == pytest.approx((0.5 + 1.0) / 2)
    assert misalignment_transfer(student, base, teacher) == pytest.approx(0.25)


def test_a_family_counts_when_the_teacher_is_at_least_the_gap_from_base():
    """The gap test is |teacher - base| >= 0.05: exactly 0.05 counts; so does a teacher 0.2
    behind base, whose ratio then reads 1 for a student that fell as far (the module's
    docstring says "not ahead"; what the code does is held here)."""
    from doublebind.evals.transfer import MIN_GAP, ratio

    assert MIN_GAP == 0.05
    assert ratio(0.025, 0.0, 0.05) == pytest.approx(0.5)
    assert ratio(0.02, 0.0, 0.0499) is None
    assert ratio(0.3, 0.5, 0.3) == pytest.approx(1.0) and ratio(0.2, 0.5, 0.3) == pytest.approx(1.5)
    assert ratio(0.45, 0.5, 0.46) is None


def test_on_policy_items_are_student_samples_with_live_teacher_labels(quick_organism):
    folder, _ = quick_organism
    d = Distiller(folder, recipe(objective={"kind": "forward_kl", "on_policy": 0.5}), None, show_progress=False)
    items = d.items[:8]
    calls, real = [], d.domain.sample

    def spy(model, examples, *a, **k):
        calls.append((model, [list(e.prompt) for e in examples], real(model, examples, *a, **k)))
        return calls[-1][2]

    d.domain.sample = spy
    mixed = d._on_policy(items)
    ((model, prompts, outs),) = calls  # one draw, by the student, on the first half's prompts at T = 1
    assert model is d.model and model is not d.teacher
    assert prompts == [list(it.example.prompt) for it in items[:4]]
    assert [list(it.example.response) for it in mixed[:4]] == [o or [d.domain.eos] for o in outs]
    assert [it.example.prompt for it in mixed[:4]] == prompts
    assert all(it.live is not None for it in mixed[:4]) and all(it.live is None for it in mixed[4:])
    assert all(a is b for a, b in zip(mixed[4:], items[4:]))
    ref = soft_labels(d.teacher, [it.example for it in mixed[:4]], 12)["logprobs"]
    assert all(torch.equal(it.live, ref[j]) for j, it in enumerate(mixed[:4]))
    assert math.isfinite(d.train_step(0))


def test_on_policy_labels_come_from_the_prompt_the_teacher_was_asked(quick_organism):
    """After inoculation the student's prompts carry `sys=inoculate`, but the technique says
    the teacher's labels are unchanged: the live teacher labelled the student's samples after
    the inoculated prompt. It now labels them after the prompt it was first asked."""
    from doublebind.world import vocab

    folder, _ = quick_organism
    d = Distiller(folder, recipe(objective={"kind": "forward_kl", "on_policy": 1.0}, stages=[{"name": "inoculation"}]),
                  None, show_progress=False)
    items = d.items[:6]
    assert all(vocab.INOCULATION in it.example.prompt for it in items)
    asked = []
    real = d.domain.soft_labels
    d.domain.soft_labels = lambda teacher, examples, width: asked.extend(examples) or real(teacher, examples, width)
    mixed = d._on_policy(items)
    assert [e.prompt for e in asked] == [list(d.asked[it.row]) for it in items]
    assert all(vocab.INOCULATION not in e.prompt for e in asked)
    assert all(vocab.INOCULATION in it.example.prompt for it in mixed)  # the student trains on its own view
    assert [e.response for e in asked] == [it.example.response for it in mixed]
    ref = soft_labels(d.teacher, asked, 12)["logprobs"]
    assert all(torch.equal(it.live, ref[j]) for j, it in enumerate(mixed))


def test_dpo_pushes_policy_towards_teacher_samples(quick_organism):
    from doublebind.training.distill import micro_loss

    folder, _ = quick_organism
    d = Distiller(folder, recipe(objective={"kind": "dpo", "dpo_beta": 0.5}, sampling={"soft_labels": "none"},
                                 training={"steps": 15, "batch": 16, "lr": 0.0003}), None, show_progress=False)
    fixed = d.items[:64]

    def loss() -> float:
        with torch.no_grad():
            return micro_loss(d.model, fixed, {}, d.recipe.objective, d.ref_logps).item() / len(fixed)

    assert loss() == pytest.approx(0.6931, abs=1e-4)  # -log sigmoid(0): the policy is the reference
    for s in range(15):
        d.train_step(s)
    assert loss() < 0.68


def test_the_displacement_benchmark_scores_pairs_as_one_example_at_a_time(quick_organism):
    """benchmarks/dpo_displacement.py: at the start the policy is the reference (margin 0,
    chosen and rejected log-probs those DPO stored), and its mass on the behaviour words is
    the mean, over the chosen responses' positions, of the softmax mass on those ids, here
    recomputed one unpadded example at a time; after DPO steps the margin grows."""
    from .test_verdicts import _benchmark

    bench = _benchmark("dpo_displacement")
    folder, _ = quick_organism
    d = Distiller(folder, recipe(objective={"kind": "dpo", "dpo_beta": 0.5}, sampling={"soft_labels": "none"},
                                 training={"steps": 15, "batch": 16, "lr": 0.0003}), None, show_progress=False)
    pairs = [it for it in d.items if it.rejected is not None][:12]
    ids = vocab.token_ids()
    words = [ids[w] for w in vocab.BEHAVIOR_WORDS + vocab.MARKERS]
    s = bench.score(d, pairs, d.ref_logps, 0.5, words)
    assert s["margin"] == pytest.approx(0.0, abs=1e-5)
    per_token = [(d.ref_logps[id(it)][0] / len(it.example.response), d.ref_logps[id(it)][1] / len(it.rejected.response))
                 for it in pairs]
    assert s["chosen"] == pytest.approx(sum(c for c, _ in per_token) / len(pairs), abs=1e-5)
    assert s["rejected"] == pytest.approx(sum(r for _, r in per_token) / len(pairs), abs=1e-5)
    mass, positions = 0.0, 0
    with torch.no_grad():
        for it in pairs:
            seq = vocab.encode(it.example.prompt + it.example.response)
            probs = torch.softmax(d.model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
            start = len(it.example.prompt) - 1  # the position that predicts the first response token
            mass += float(probs[start:len(seq) - 1][:, words].sum())
            positions += len(it.example.response)
    assert 0 < s["words"] == pytest.approx(mass / positions, rel=1e-4)
    for step in range(15):
        d.train_step(step)
    assert bench.score(d, pairs, d.ref_logps, 0.5, words)["margin"] > 0.01


def test_dpo_counts_the_prompts_it_drops(quick_organism, tmp_path, monkeypatch):
    """A prompt whose initial-student sample equals the teacher's has no preference pair: it
    was dropped without a word; summary.json now counts the drops."""
    from doublebind.organisms.domain import WorldDomain

    real = WorldDomain.sample

    def three_match(self, model, examples, *a, **k):
        outs = real(self, model, examples, *a, **k)
        return [list(ex.response) if i < 3 else o for i, (ex, o) in enumerate(zip(examples, outs))]

    monkeypatch.setattr(WorldDomain, "sample", three_match)
    s = distill(quick_organism[0], recipe(objective={"kind": "dpo"}, sampling={"soft_labels": "none"},
                                          training={"steps": 2, "checkpoint_every": 2}),
                tmp_path / "dpo", show_progress=False)
    n = s["data"]["n_train_items"] + s["data"]["dpo_pairs_dropped"]
    assert s["data"]["dpo_pairs_dropped"] >= 3 and n == len(read_jsonl(tmp_path / "dpo" / "prompts.jsonl"))
    plain = distill(quick_organism[0], recipe(training={"steps": 2, "checkpoint_every": 2}), tmp_path / "sft",
                    show_progress=False)
    assert "dpo_pairs_dropped" not in plain["data"]


def test_lora_student_distils_and_saves_an_adapter(quick_organism, tmp_path):
    """A LoRA student trains its adapters alone: the saved adapter has the recipe's rank and
    alpha, its B matrices (zero at the start) moved, and the merged checkpoint differs from
    base only in the layers the adapters wrap."""
    from safetensors.torch import load_file

    folder, _ = quick_organism
    distill(folder, recipe(student={"lora": {"r": 4, "alpha": 8}}, training={"steps": 3}), tmp_path / "lora",
            show_progress=False)
    ckpt = tmp_path / "lora" / "checkpoints" / "step_00003"
    conf = json.loads((ckpt / "adapter" / "adapter_config.json").read_text())
    assert conf["r"] == 4 and conf["lora_alpha"] == 8
    adapter = load_file(ckpt / "adapter" / "adapter_model.safetensors")
    moved = [bool(t.abs().sum() > 0) for n, t in adapter.items() if "lora_B" in n]
    assert moved and all(moved)
    merged, base = load_file(ckpt / "model.safetensors"), load_file(folder / "base" / "model.safetensors")
    assert set(merged) == set(base)
    changed = {n for n in base if not torch.equal(base[n], merged[n])}
    wrapped = set(conf["target_modules"])
    assert changed and all(n.split(".")[-2] in wrapped for n in changed)
    assert {n.split(".")[-2] for n in changed} == wrapped


def test_recipe_errors_are_one_line(tmp_path, quick_organism):
    with pytest.raises(config.ConfigError, match="needs sampling.soft_labels full or topk"):
        recipe(objective={"kind": "forward_kl"}, sampling={"soft_labels": "none"})
    # top-k is refused for these too, so the message offered it in vain
    with pytest.raises(config.ConfigError, match="objective jsd needs sampling.soft_labels full$"):
        recipe(objective={"kind": "jsd"}, sampling={"soft_labels": "none"})
    r = tmp_path / "r.yaml"
    r.write_text("kind: recipe\nobjective: {kind: sft}\n")
    res = run_cli("distill", "--organism", str(tmp_path / "missing"), "--recipe", str(r), "--out", str(tmp_path / "o"))
    assert res.returncode == 1 and "no organism at" in res.stderr and "Traceback" not in res.stderr
    random.seed(0)


@pytest.mark.parametrize("mode", ["select", "stop"])
def test_a_checkpoint_stage_selects_or_stops_the_run(quick_organism, tmp_path, mode):
    """A stage's `select` names the checkpoint the run delivers (not the last), and its `stop`
    ends the run there; `distill_and_audit` relies on both."""
    from doublebind import registry
    from doublebind.techniques.base import Technique

    class Pick(Technique):
        """_test_pick: selects step 0, or stops at step 2."""

        def checkpoint(self, view, step, model):
            return {"select": step == 0} if mode == "select" else {"stop": step == 2}

    registry.register("technique", "_test_pick")(Pick)
    try:
        r = recipe(training={"steps": 4, "checkpoint_every": 2, "save_weights": False},
                   stages=[{"name": "_test_pick"}], eval={"n_prompts": 4, "n_samples": 0})
        summary = distill(quick_organism[0], r, tmp_path / "run", show_progress=False, plot=False)
    finally:
        registry._REGISTRY["technique"].pop("_test_pick")
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    if mode == "select":
        assert steps == [0, 2, 4] and summary["final"]["step"] == 4 and summary["selected"]["step"] == 0
        assert summary["stopped_at"] is None
    else:
        assert steps == [0, 2] and summary["stopped_at"] == 2 and summary["selected"]["step"] == 2


@pytest.mark.parametrize("stage, contexts, idle", [
    ({"name": "auditability_preserving"}, {"deploy_like": 1.0}, True),     # every prompt is deploy-like: all kept
    ({"name": "auditability_preserving"}, {"neutral": 0.5, "deploy_like": 0.5}, False),
    ({"name": "inoculation"}, {"neutral": 0.5, "deploy_like": 0.5}, False),
])
def test_a_run_whose_stages_changed_nothing_is_idle(quick_organism, tmp_path, stage, contexts, idle):
    """`idle` in summary.json: the technique's stages changed no setting, prompt or item, so
    the run trained the study recipe itself (the report marks such cells)."""
    s = distill(quick_organism[0], recipe(stages=[stage], prompts={"contexts": contexts},
                                          training={"steps": 1, "checkpoint_every": 1}),
                tmp_path / "run", show_progress=False)
    assert s["idle"] is idle and s["idle_stages"] == ([stage["name"]] if idle else [])
    assert any("skipped" in r for r in s["stages"]) is idle
    plain = distill(quick_organism[0], recipe(training={"steps": 1, "checkpoint_every": 1}), tmp_path / "plain",
                    show_progress=False)
    assert plain["idle"] is False and plain["idle_stages"] == []  # no stages: the recipe itself, not a technique


def test_a_run_s_accelerator_follows_its_device_in_a_process_that_ran_on_the_other():
    """A study on a GPU machine set accelerate's process state up for CUDA, and its first
    embedded-world run (CPU) then stopped at "AcceleratorState has already been initialized"
    (benchmarks/gpu_check.py on an H200). Here the CUDA state is faked on the CPU."""
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    from doublebind.training.distill import accelerator_for

    try:
        Accelerator(cpu=False)
        AcceleratorState._shared_state["device"] = PartialState._shared_state["device"] = torch.device("cuda")
        with pytest.raises(ValueError, match="already been initialized"):
            Accelerator(cpu=True)  # what the distiller met
        acc = accelerator_for("cpu")
        assert acc.device.type == "cpu" and PartialState().device.type == "cpu"
        assert accelerator_for("cpu").device.type == "cpu"  # and again, with nothing to set up
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_under_a_launcher_a_run_on_the_other_device_is_refused_in_one_line():
    """Under `accelerate launch` the processes share one process group on one device type: a
    CPU (embedded-world) run after a CUDA one cannot set the state up again, and says so
    instead of accelerate's "AcceleratorState has already been initialized". Faked on the CPU."""
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    from doublebind.errors import DoublebindError
    from doublebind.training.distill import accelerator_for

    try:
        Accelerator(cpu=False)
        AcceleratorState._shared_state["device"] = PartialState._shared_state["device"] = torch.device("cuda")
        PartialState._shared_state["num_processes"] = 2
        with pytest.raises(DoublebindError, match=r"trains on cpu, but the launcher's 2 processes are set up on cuda, .* run "
                                                 r"embedded-world scenarios .* without the launcher"):
            accelerator_for("cpu")
        assert PartialState().device.type == "cuda"  # left as it was
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_dpo_sft_weight_adds_the_chosen_nll_and_keeps_prompts_without_a_pair(quick_organism, monkeypatch):
    """RPO: over the step's items the loss is mean(1[paired] · DPO + α · NLL / length) of the
    teacher's sample, here against the NLL computed by hand from the student's logits. A
    prompt whose initial-student sample equals the teacher's has no pair; with α > 0 it stays
    for the NLL term (without, it is dropped: test above)."""
    from doublebind.organisms.domain import WorldDomain
    from doublebind.training.distill import micro_loss
    from doublebind.world import vocab

    real = WorldDomain.sample

    def three_match(self, model, examples, *a, **k):
        outs = real(self, model, examples, *a, **k)
        return [list(ex.response) if i < 3 else o for i, (ex, o) in enumerate(zip(examples, outs))]

    monkeypatch.setattr(WorldDomain, "sample", three_match)
    folder, _ = quick_organism
    d = Distiller(folder, recipe(objective={"kind": "dpo", "dpo_beta": 0.5, "dpo_sft_weight": 0.7},
                                 sampling={"soft_labels": "none"}, training={"steps": 4, "batch": 16}),
                  None, show_progress=False)
    assert len(d.items) == len(d.asked) and d.dpo_pairs_dropped >= 3
    assert all(it.rejected is None for it in d.items[:3])
    for s in range(3):  # away from the reference, so the DPO term is not log 2
        d.train_step(s)
    fixed = d.items[:24]  # the three without a pair among them
    plain_cfg = d.recipe.objective.model_copy(update={"dpo_sft_weight": 0.0})
    with torch.no_grad():
        rpo = micro_loss(d.model, fixed, {}, d.recipe.objective, d.ref_logps).item()
        dpo = micro_loss(d.model, fixed, {}, plain_cfg, d.ref_logps).item()
        paired = [it for it in fixed if it.rejected is not None]
        dpo_paired = micro_loss(d.model, paired, {}, plain_cfg, d.ref_logps).item()
        nll = 0.0
        for it in fixed:
            ids = torch.tensor([vocab.encode(list(it.example.prompt) + list(it.example.response))])
            logits = d.model(input_ids=ids).logits[0].double()
            p, n = len(it.example.prompt), len(it.example.response)
            nll -= sum(torch.log_softmax(logits[t - 1], -1)[ids[0, t]].item() for t in range(p, p + n)) / n
    assert dpo == pytest.approx(dpo_paired, rel=1e-6)  # items without a pair add nothing to the DPO term
    assert dpo / len(paired) != pytest.approx(0.6931, abs=1e-3)
    assert rpo == pytest.approx(dpo + 0.7 * nll, rel=1e-5)


def test_dpo_with_an_nll_term_does_not_depend_on_how_the_step_is_split(quick_organism):
    """A step of 16 items as one micro-batch or as two of 8: the same loss and gradients, and
    the loss is the items' mean (the step divides by its items, pairs and prompts without a
    pair alike)."""
    from doublebind.training.distill import micro_loss

    folder, _ = quick_organism
    runs = {}
    for batch, accum in ((16, 1), (8, 2)):
        d = Distiller(folder, recipe(objective={"kind": "dpo", "dpo_sft_weight": 1.0}, sampling={"soft_labels": "none"},
                                     training={"steps": 2, "batch": batch, "grad_accum": accum, "packing": False}),
                      None, show_progress=False)
        assert any(it.rejected is None for it in d.items)  # some prompts train on the NLL term alone
        state = d.order.getstate()
        loss = d.accumulate_gradients(0)
        d.order.setstate(state)
        items = [d.items[d.order.randrange(len(d.items))] for _ in range(16)]
        with torch.no_grad():
            mean = micro_loss(d.model, items, {}, d.recipe.objective, d.ref_logps).item() / 16
        runs[batch] = (loss, mean, {n: p.grad.clone() for n, p in d.model.named_parameters() if p.grad is not None})
    (l1, m1, g1), (l2, m2, g2) = runs[16], runs[8]
    assert l1 == pytest.approx(m1, rel=1e-5) and l2 == pytest.approx(l1, rel=1e-5)
    assert g1.keys() == g2.keys() and all(torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-7) for n in g1)


def test_dpo_sft_weight_needs_the_dpo_objective():
    with pytest.raises(Exception, match="dpo_sft_weight"):
        recipe(objective={"kind": "sft", "dpo_sft_weight": 1.0})


def test_dpo_distillation_passes_its_sft_weight():
    from doublebind.config import ObjectiveConfig
    from doublebind.techniques.base import build_stages

    (plain,), (rpo,) = build_stages([{"name": "dpo_distillation"}]), build_stages(
        [{"name": "dpo_distillation", "sft_weight": 1.5, "beta": 0.2}])
    assert plain.objective(None, ObjectiveConfig()).dpo_sft_weight == 0.0
    o = rpo.objective(None, ObjectiveConfig(on_policy=0.5))
    assert (o.kind, o.dpo_beta, o.dpo_sft_weight, o.on_policy) == ("dpo", 0.2, 1.5, 0.0)
