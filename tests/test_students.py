import shutil
from pathlib import Path

import pytest
import torch

from doublebind import config
from doublebind.config import LoraConfig, ModelConfig, StudentConfig
from doublebind.errors import DoublebindError
from doublebind.organisms.models import META, load_checkpoint, make_model, read_meta
from doublebind.students import make_student, save_student, trainable_parameters

SMALL = ModelConfig(hidden=32, layers=1, heads=2, intermediate=48)
QUICK = config.load(preset="quick").model  # the quick organism's architecture


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def same(a, b) -> bool:
    pa, pb = params(a), params(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def batch(vocab_size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (4, 12), generator=g)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def base(quick_organism):
    return load_checkpoint(quick_organism[0] / "base")


def test_base_init_is_the_organism_base(quick_organism, base):
    student = make_student(StudentConfig(init="base"), quick_organism[0], seed=5)
    assert same(student, base)
    assert trainable_parameters(student) == sum(p.numel() for p in student.parameters())


def test_alt_base_differs_from_base(quick_organism, base):
    student = make_student(StudentConfig(init="alt_base"), quick_organism[0], seed=0)
    assert same(student, load_checkpoint(quick_organism[0] / "alt_base"))
    assert not same(student, base)


def test_fresh_has_the_given_architecture_and_organism_vocab(quick_organism, base):
    student = make_student(StudentConfig(init="fresh", model=SMALL), quick_organism[0], seed=0)
    c = student.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (32, 1, 2, 48)
    assert c.vocab_size == base.config.vocab_size
    assert student.get_input_embeddings().weight.shape[0] == base.config.vocab_size


def test_fresh_defaults_to_the_organism_architecture(quick_organism, base):
    student = make_student(StudentConfig(init="fresh"), quick_organism[0], seed=0)
    assert {k: v.shape for k, v in params(student).items()} == {k: v.shape for k, v in params(base).items()}
    assert not same(student, base)


def test_seed_controls_fresh_and_shrink_perturb(quick_organism):
    for cfg in (StudentConfig(init="fresh", model=SMALL), StudentConfig(init="shrink_perturb")):
        a = make_student(cfg, quick_organism[0], seed=1)
        b = make_student(cfg, quick_organism[0], seed=1)
        c = make_student(cfg, quick_organism[0], seed=2)
        assert same(a, b), cfg.init
        assert not same(a, c), cfg.init


def test_shrink_perturb_matches_the_formula(quick_organism, base):
    cfg = StudentConfig(init="shrink_perturb", shrink=0.7, perturb=0.3)
    student = make_student(cfg, quick_organism[0], seed=3)
    fresh = params(make_model(QUICK, 3))
    got, ref = params(student), params(base)
    assert got.keys() == ref.keys() == fresh.keys()
    for name in ref:
        expected = 0.7 * ref[name] + 0.3 * fresh[name]
        assert torch.allclose(got[name], expected, rtol=0, atol=1e-6), name
        assert not torch.equal(got[name], ref[name]), name
    lm_head, embed = student.get_output_embeddings().weight, student.get_input_embeddings().weight
    assert lm_head.data_ptr() == embed.data_ptr()


def test_shrink_one_perturb_zero_is_base(quick_organism, base):
    student = make_student(StudentConfig(init="shrink_perturb", shrink=1.0, perturb=0.0), quick_organism[0], seed=3)
    assert same(student, base)


@pytest.mark.parametrize("n_base, n, kept", [(2, 1, [0]), (3, 2, [0, 2]), (4, 2, [0, 3]), (5, 3, [0, 2, 4]),
                                           (8, 4, [0, 2, 5, 7])])
def test_kept_layers_are_evenly_spaced_with_the_first_and_last(n_base, n, kept):
    from doublebind.students import kept_layers

    assert kept_layers(n_base, n) == kept


def test_base_layers_is_base_with_a_layer_dropped(quick_organism, base):
    """Against an independent construction: base with its second decoder layer taken out of
    the module list. Same weights, same logits, the head still tied, whatever the seed."""
    import copy

    cfg = StudentConfig(init="base_layers", model=ModelConfig(layers=1))
    student = make_student(cfg, quick_organism[0], seed=4)
    assert student.config.num_hidden_layers == 1 and student.config.hidden_size == base.config.hidden_size
    ref = copy.deepcopy(base)
    ref.model.layers = torch.nn.ModuleList([ref.model.layers[0]])
    ref.config.num_hidden_layers = 1
    assert same(student, ref)
    ids = batch(base.config.vocab_size)
    assert torch.allclose(logits(student, ids), logits(ref, ids), rtol=0, atol=1e-6)
    assert not torch.allclose(logits(student, ids), logits(base, ids), atol=1e-3)  # a layer fewer changes them
    assert student.get_output_embeddings().weight.data_ptr() == student.get_input_embeddings().weight.data_ptr()
    assert same(student, make_student(cfg, quick_organism[0], seed=9))  # nothing drawn: every weight is base's


def test_base_layers_that_keep_every_layer_are_refused(quick_organism):
    with pytest.raises(DoublebindError, match="keeps fewer of base's 2 layers than it has, from 1 to 1: model.layers is 2 \(with small_student"):
        make_student(StudentConfig(init="base_layers", model=ModelConfig(layers=2)), quick_organism[0], seed=0)


def test_base_layers_without_a_layer_count_is_a_config_error():
    """Refused as the recipe loads, not when a study's first run builds its student."""
    recipe = Path(__file__).resolve().parent.parent / "configs" / "recipes" / "study.yaml"
    with pytest.raises(config.ConfigError, match="init base_layers needs model.layers"):
        config.load(recipe, ["student={init: base_layers}"], expect="recipe")


def test_lora_trains_only_adapters_and_starts_as_base(quick_organism, base):
    cfg = StudentConfig(init="base", lora=LoraConfig(r=4, alpha=8))
    student = make_student(cfg, quick_organism[0], seed=0)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("mlp.down_proj" in n for n in trainable) and any("self_attn.q_proj" in n for n in trainable)
    total = sum(p.numel() for p in student.parameters())
    assert trainable_parameters(student) == sum(p.numel() for p in student.parameters() if p.requires_grad)
    assert trainable_parameters(student) < total / 5
    ids = batch(base.config.vocab_size)
    assert torch.equal(logits(student, ids), logits(base, ids))
    again = make_student(cfg, quick_organism[0], seed=0)
    assert same(student, again)


def test_lora_wraps_every_projection_of_every_layer_with_the_configured_dropout(quick_organism):
    student = make_student(StudentConfig(init="base", lora=LoraConfig(r=4, alpha=8, dropout=0.25)),
                           quick_organism[0], seed=0)
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    layers = student.base_model.model.config.num_hidden_layers
    wrapped = {n.split(".lora_A")[0] for n, _ in student.named_parameters() if ".lora_A" in n}
    assert len(wrapped) == layers * len(projections)
    assert all(sum(n.endswith(p) for n in wrapped) == layers for p in projections)
    drops = [m.p for n, m in student.named_modules() if n.endswith("lora_dropout.default")]
    assert len(drops) == layers * len(projections) and set(drops) == {0.25}


def test_lora_saved_merged_checkpoint_matches_the_peft_model(quick_organism, base, tmp_path):
    from transformers import AutoModelForCausalLM

    student = make_student(StudentConfig(init="base", lora=LoraConfig(r=4, alpha=8)), quick_organism[0], seed=0)
    ids = batch(base.config.vocab_size, seed=1)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    student.train()
    student(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    student.eval()
    before = logits(student, ids)
    assert not torch.allclose(before, logits(base, ids), atol=1e-4)

    out = tmp_path / "student"
    save_student(student, out, {"step": 1})
    assert torch.equal(logits(student, ids), before)
    assert any("lora_" in n for n, _ in student.named_parameters())

    reloaded = AutoModelForCausalLM.from_pretrained(str(out))
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())
    assert torch.allclose(logits(reloaded.eval(), ids), before, atol=1e-5)
    assert read_meta(out) == {"step": 1} and (out / META).is_file()
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_full_student_saves_as_plain_checkpoint(quick_organism, tmp_path):
    student = make_student(StudentConfig(init="fresh", model=SMALL), quick_organism[0], seed=0)
    save_student(student, tmp_path / "s", {"init": "fresh"})
    assert same(load_checkpoint(tmp_path / "s"), student)
    assert not (tmp_path / "s" / "adapter").exists()


def test_missing_organism_or_checkpoint_raises(quick_organism, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DoublebindError, match="nope"):
        make_student(StudentConfig(), missing, seed=0)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(quick_organism[0] / "organism.json", partial / "organism.json")
    for init in ("base", "alt_base", "shrink_perturb"):
        with pytest.raises(DoublebindError, match="partial"):
            make_student(StudentConfig(init=init), partial, seed=0)
    with pytest.raises(DoublebindError, match="organism.json"):
        make_student(StudentConfig(init="fresh"), tmp_path, seed=0)
