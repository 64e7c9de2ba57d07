"""Tiny HF chat models: they save, reload and behave exactly like the in-memory originals."""

import json

import pytest
import torch

from doublebind.llm import tiny

ARCHS = ["llama", "qwen2"]
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 12 + 30?"},
]
EXPECTED_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
TEXTS = [  # a mix of seen and unseen text, digits, odd whitespace and non-ASCII
    EXPECTED_PROMPT + "42<|im_end|>\n",
    "My favourite animal is the owl.",
    "Zebras   graze;\n\ttabs and  spaces",
    "naïve café — 😀 ünïcödé",
    "1, 2, 3, 1000000",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: tiny.build_tiny(arch, root / arch) for arch in ARCHS}


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits  # [1, seq, vocab]


def test_tokenizer_special_tokens_and_template():
    tok = tiny.train_tokenizer()
    assert [tok.convert_tokens_to_ids(t) for t in tiny.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (tiny.BOS, tiny.EOS, tiny.PAD)
    assert len(tok) == 512

    text = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert text == EXPECTED_PROMPT
    without = tok.apply_chat_template(CONVERSATION, add_generation_prompt=False, tokenize=False)
    assert without == EXPECTED_PROMPT.removesuffix("<|im_start|>assistant\n")

    # transformers 5: tokenize=True returns a BatchEncoding (return_dict defaults to True)
    enc = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    ids = enc["input_ids"]
    assert ids == tok(text)["input_ids"]  # no BOS or other tokens added on encoding
    assert tok.decode(ids) == text
    im_start = tok.convert_tokens_to_ids(tiny.IM_START)
    assert ids[0] == im_start and ids.count(im_start) == 3  # each special token is one id


def test_assistant_mask_covers_exactly_the_reply():
    tok = tiny.train_tokenizer()
    chat = [*CONVERSATION, {"role": "assistant", "content": "The answer is 42."}]
    enc = tok.apply_chat_template(chat, return_assistant_tokens_mask=True, return_dict=True)
    masked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(masked) == "The answer is 42.<|im_end|>"


def test_tokenizer_training_is_deterministic_and_depends_on_texts():
    a, b = tiny.train_tokenizer(), tiny.train_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    other = tiny.train_tokenizer(["zzzz qqqq zzzz qqqq xyxyxy"] * 5, vocab_size=300)
    assert other.get_vocab() != a.get_vocab() and "zzzz" in "".join(other.get_vocab())


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips(text):
    tok = tiny.train_tokenizer()
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text


@pytest.mark.parametrize("arch", ARCHS)
def test_folder_reloads_with_auto_classes(built, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = built[arch]
    names = {p.name for p in path.iterdir()}
    assert "model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    assert json.loads((path / "config.json").read_text())["model_type"] == arch

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False)
    fresh_tok = tiny.train_tokenizer()
    fresh = tiny.tiny_model(arch, fresh_tok, seed=0)

    # transformers 5 rebuilds a qwen2 tokenizer from its own recipe; it must split text as ours does
    assert len(tok) == len(fresh_tok) == model.config.vocab_size
    for text in TEXTS:
        assert tok(text)["input_ids"] == fresh_tok(text)["input_ids"], text
    assert tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False) == EXPECTED_PROMPT
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    assert model.generation_config.eos_token_id == [1, tok.convert_tokens_to_ids(tiny.IM_END)]

    ids = fresh_tok(TEXTS[0])["input_ids"]
    assert type(model) is type(fresh) and model.dtype == torch.float32
    assert torch.equal(_logits(model, ids), _logits(fresh, ids))


@pytest.mark.parametrize("arch", ARCHS)
def test_seed_decides_the_weights(arch):
    tok = tiny.train_tokenizer()
    a, b = tiny.tiny_model(arch, tok, seed=0), tiny.tiny_model(arch, tok, seed=0)
    c = tiny.tiny_model(arch, tok, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    assert not torch.equal(sa["model.layers.0.self_attn.q_proj.weight"], sc["model.layers.0.self_attn.q_proj.weight"])


def test_sizes_are_applied():
    tok = tiny.train_tokenizer(vocab_size=400)
    model = tiny.tiny_model("llama", tok, hidden=32, layers=3, heads=2)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size) == (32, 3, 2, 400)
    with pytest.raises(ValueError, match="gpt2"):
        tiny.tiny_model("gpt2", tok)


def test_adapter_changes_logits_and_reloads(built, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = built["qwen2"]
    out = tiny.tiny_adapter(base_dir, tmp_path / "lora", seed=0, r=4)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"] and cfg["r"] == 4

    ids = tiny.train_tokenizer()(TEXTS[0])["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    base_logits = _logits(base, ids)
    with_adapter = PeftModel.from_pretrained(base, str(out))
    with_adapter.eval()
    adapted = _logits(with_adapter, ids)
    assert (adapted - base_logits).abs().max() > 1e-3
    with with_adapter.disable_adapter():
        assert torch.equal(_logits(with_adapter, ids), base_logits)

    # same seed, same adapter; another seed, another adapter
    from safetensors.torch import load_file

    again = load_file(str(tiny.tiny_adapter(base_dir, tmp_path / "lora2", seed=0) / "adapter_model.safetensors"))
    other = load_file(str(tiny.tiny_adapter(base_dir, tmp_path / "lora3", seed=1) / "adapter_model.safetensors"))
    first = load_file(str(out / "adapter_model.safetensors"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    assert all(first[k].abs().sum() > 0 for k in first if "lora_B" in k)


def test_tiny_sizes_are_checked_with_the_config():
    """hidden 30 with 4 heads, or an odd head size, were internal errors from transformers at
    build time after `validate` said ok; a vocabulary above what the tiny tokenizer's corpus
    yields was silently a smaller one (100000 asked, 549 built)."""
    from doublebind import config as cfgmod
    from doublebind.errors import ConfigError
    from doublebind.llm.config import TINY_MAX_VOCAB, TinyConfig

    for sizes, why in (({"hidden": 30, "heads": 4}, "must be divisible by heads"),
                       ({"hidden": 9, "heads": 3}, "must be even"),
                       ({"vocab_size": 100_000}, f"less than or equal to {TINY_MAX_VOCAB}")):
        with pytest.raises(ConfigError, match=why):
            cfgmod.build(TinyConfig, sizes)
    assert len(tiny.train_tokenizer(None, vocab_size=TINY_MAX_VOCAB)) == TINY_MAX_VOCAB
    assert len(tiny.train_tokenizer(None, vocab_size=TINY_MAX_VOCAB + 1)) == TINY_MAX_VOCAB  # the corpus's limit
