"""Sampling engines: the HF engine against transformers' own generate and an independent
teacher-forced pass; the vLLM adapter against a stand-in `LLM` and module (vLLM is not
installed here, and the adapter must not need it to be tested)."""

import sys
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from doublebind.errors import DoublebindError
from doublebind.llm.engines import Generation, HFEngine, VLLMEngine, make_engine, request_seed

PAD = 0
PROMPTS = [[5, 9, 14], [3, 17, 22, 8, 40, 11, 2], [7], [30, 31, 32, 33, 34]]  # different lengths


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def hf_greedy(model, prompt, n, eos):
    """transformers' greedy continuation of one unpadded prompt."""
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=PAD)
    return out[0, len(prompt):].tolist()


# --------------------------------------------------------------------------------------------- HF


def test_hf_greedy_equals_transformers_generate(model):
    n = 10
    # An eos that the first prompt's greedy continuation produces early, so some rows stop
    # while others go on with padding in the batch.
    eos = hf_greedy(model, PROMPTS[0], n, eos=63)[3]
    refs = [hf_greedy(model, p, n, eos) for p in PROMPTS]
    assert any(r[-1] == eos and len(r) < n for r in refs) and any(len(r) == n for r in refs)
    for batch_size in (64, 3):
        gens = HFEngine(model, eos_id=eos, pad_id=PAD, batch_size=batch_size).generate(
            PROMPTS, max_new_tokens=n, temperature=0.0)
        assert [g.tokens for g in gens] == refs
        assert all(g.topk is None for g in gens)


def test_hf_sampling_follows_the_seed_not_the_global_rng(model):
    engine = HFEngine(model, eos_id=63, pad_id=PAD)
    prompts = PROMPTS + [PROMPTS[0]] * 3
    run = lambda seed: [g.tokens for g in engine.generate(prompts, max_new_tokens=12, temperature=1.0, seed=seed)]
    torch.manual_seed(1)
    a = run(0)
    torch.manual_seed(2)
    b = run(0)
    assert a == b
    assert run(1) != a
    assert len({tuple(t) for t in a[-4:]}) > 1  # a repeated prompt gets independent samples
    assert a != [g.tokens for g in engine.generate(prompts, max_new_tokens=12, temperature=0.0)]


def test_hf_tiny_top_p_is_greedy(model):
    engine = HFEngine(model, eos_id=63, pad_id=PAD)
    greedy = engine.generate(PROMPTS, max_new_tokens=8, temperature=0.0)
    nucleus = engine.generate(PROMPTS, max_new_tokens=8, temperature=2.0, top_p=1e-6, seed=3)
    hot = engine.generate(PROMPTS, max_new_tokens=8, temperature=2.0, top_p=1.0, seed=3)
    assert [g.tokens for g in nucleus] == [g.tokens for g in greedy]
    assert [g.tokens for g in hot] != [g.tokens for g in greedy]


def test_hf_topk_equals_teacher_forced_log_softmax(model):
    k = 5
    gens = HFEngine(model, eos_id=63, pad_id=PAD, batch_size=3).generate(
        PROMPTS, max_new_tokens=9, temperature=1.7, seed=4, logprobs=k)  # topk stays at T = 1
    for prompt, g in zip(PROMPTS, gens):
        assert len(g.topk) == len(g.tokens) > 0
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + g.tokens])).logits[0]  # [T, V]
        logp = torch.log_softmax(logits.double(), dim=-1)[len(prompt) - 1 : len(prompt) - 1 + len(g.tokens)]
        ref_vals, ref_ids = logp.topk(k, dim=-1)  # [n, k]
        ids = torch.tensor([[t for t, _ in pos] for pos in g.topk])
        vals = torch.tensor([[v for _, v in pos] for pos in g.topk], dtype=torch.double)
        assert torch.equal(ids, ref_ids)
        torch.testing.assert_close(vals, ref_vals, atol=1e-5, rtol=1e-5)
        assert all(pos[i][1] >= pos[i + 1][1] for pos in g.topk for i in range(k - 1))


def _with_adapter():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)  # LoRA weights; init_lora_weights=False makes them nonzero
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    return get_peft_model(tiny_llama(), lora, adapter_name="x").eval()


def test_hf_adapter_is_selected_by_name_and_none_is_the_base(tmp_path):
    peft_model = _with_adapter()
    engine = HFEngine(peft_model, eos_id=63, pad_id=PAD)
    with_x = [g.tokens for g in engine.generate(PROMPTS, max_new_tokens=8, temperature=0.0, adapter="x")]
    base = [g.tokens for g in engine.generate(PROMPTS, max_new_tokens=8, temperature=0.0)]
    assert base == [hf_greedy(tiny_llama(), p, 8, 63) for p in PROMPTS]
    peft_model.set_adapter("x")
    assert with_x == [hf_greedy(peft_model, p, 8, 63) for p in PROMPTS]
    assert with_x != base
    with pytest.raises(DoublebindError, match="unknown adapter 'y'.*x"):
        engine.generate(PROMPTS, max_new_tokens=2, adapter="y")
    with pytest.raises(DoublebindError, match="unknown adapter"):
        HFEngine(tiny_llama(), eos_id=63, pad_id=PAD).generate(PROMPTS, max_new_tokens=2, adapter="x")

    # make_engine loads adapters from folders, as the vLLM engine takes them.
    peft_model.save_pretrained(tmp_path, selected_adapters=["x"])
    path = next(p.parent for p in tmp_path.rglob("adapter_config.json"))
    loaded = make_engine("hf", model=tiny_llama(), eos_id=63, pad_id=PAD, lora_paths={"teacher": str(path)})
    assert [g.tokens for g in loaded.generate(PROMPTS, max_new_tokens=8, temperature=0.0, adapter="teacher")] == with_x
    assert [g.tokens for g in loaded.generate(PROMPTS, max_new_tokens=8, temperature=0.0)] == base

    # Adapters loaded through transformers' own integration (`model.load_adapter`, which needs
    # a newer peft than installed here) have another on/off switch: refused, not half-handled.
    integrated = tiny_llama()
    integrated.peft_config = {"teacher": None}
    for name in (None, "teacher"):
        with pytest.raises(DoublebindError, match="peft.PeftModel"):
            HFEngine(integrated, eos_id=63, pad_id=PAD).generate(PROMPTS, max_new_tokens=2, adapter=name)


# --------------------------------------------------------------------------------------------- vLLM


@dataclass
class Logprob:  # the fields of vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def fake_vllm(llm=None):
    """The parts of the `vllm` namespace the engine uses, recording how they were called."""
    made = []

    def make_llm(**kwargs):
        made.append(kwargs)
        return llm

    return SimpleNamespace(SamplingParams=Recorder, LoRARequest=Recorder, LLM=make_llm, made=made)


class FakeLLM:
    """Returns scripted completions shaped like vLLM's RequestOutput / CompletionOutput."""

    def __init__(self, completions):
        self.completions, self.calls = completions, []

    def generate(self, prompts, sampling_params=None, /, *, use_tqdm=True, lora_request=None):
        self.calls.append(SimpleNamespace(prompts=prompts, params=sampling_params, use_tqdm=use_tqdm,
                                          lora=lora_request))
        outs = [SimpleNamespace(index=0, text="", token_ids=tuple(ids), logprobs=lps, finish_reason="stop")
                for ids, lps in self.completions]
        return [SimpleNamespace(request_id=str(i), outputs=[o]) for i, o in enumerate(outs)]


def lp(**by_id):
    return {int(t[1:]): Logprob(v) for t, v in by_id.items()}


def test_vllm_sampling_params_prompts_and_logprob_conversion():
    completions = [
        # k = 2, sampled tokens inside the top 2; entries arrive unsorted
        ([4, 9], [lp(t4=-0.5, t7=-1.5), lp(t3=-2.0, t9=-0.1)]),
        # position 0: the sampled token 11 is outside the top 2, so vLLM sends k + 1 entries
        ([11, 5, 2, 8], [lp(t11=-4.0, t1=-0.3, t6=-1.2), lp(t5=-0.2, t6=-2.2), lp(t2=-0.9, t3=-0.7, t5=-3.0),
                         lp(t8=-0.1, t1=-3.0)]),
    ]
    llm = FakeLLM(completions)
    engine = VLLMEngine(llm, eos_id=2, vllm_module=fake_vllm())
    gens = engine.generate([[1, 2, 3], [4]], max_new_tokens=7, temperature=0.8, top_p=0.9, seed=5, logprobs=2)

    (call,) = llm.calls
    assert call.prompts == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4]}]
    assert call.use_tqdm is False and call.lora is None
    assert [p.kwargs for p in call.params] == [
        dict(temperature=0.8, top_p=0.9, max_tokens=7, seed=request_seed(5, i), logprobs=2, stop_token_ids=[2])
        for i in range(2)]
    assert gens == [
        Generation([4, 9], [[(4, -0.5), (7, -1.5)], [(9, -0.1), (3, -2.0)]]),
        Generation([11, 5, 2], [[(1, -0.3), (6, -1.2)], [(5, -0.2), (6, -2.2)], [(3, -0.7), (2, -0.9)]]),  # cut at eos
    ]


def test_vllm_request_seeds_differ_per_prompt_and_per_seed():
    seeds = lambda seed: [request_seed(seed, i) for i in range(50)]
    assert len(set(seeds(0))) == 50
    assert seeds(0) == seeds(0) and not set(seeds(0)) & set(seeds(1))
    assert all(0 <= s < 2**31 for s in seeds(0) + seeds(1))


def test_vllm_no_logprobs_asked():
    llm = FakeLLM([([3, 4], None)])
    (g,) = VLLMEngine(llm, vllm_module=fake_vllm()).generate([[1]], max_new_tokens=2, temperature=0.0)
    assert g == Generation([3, 4], None)
    assert llm.calls[0].params[0].kwargs == dict(temperature=0.0, top_p=1.0, max_tokens=2, seed=request_seed(0, 0),
                                                 logprobs=None)


def test_vllm_lora_request():
    llm = FakeLLM([([3], None)])
    engine = VLLMEngine(llm, lora_paths={"base_ft": "/a", "teacher": "/b"}, vllm_module=fake_vllm())
    engine.generate([[1]], max_new_tokens=1, adapter="teacher")
    engine.generate([[1]], max_new_tokens=1, adapter="base_ft")
    engine.generate([[1]], max_new_tokens=1)
    assert [c.lora.args for c in llm.calls[:2]] == [("teacher", 2, "/b"), ("base_ft", 1, "/a")]
    assert llm.calls[2].lora is None
    with pytest.raises(DoublebindError, match="unknown adapter 'student'.*base_ft, teacher"):
        engine.generate([[1]], max_new_tokens=1, adapter="student")
    assert len(llm.calls) == 3


def test_make_engine_builds_vllm_llm():
    llm = FakeLLM([([3], None)])
    mod = fake_vllm(llm)
    engine = make_engine("vllm", model_path="runs/teacher", eos_id=2, pad_id=0, lora_paths={"t": "/t"},
                         vllm_module=mod, dtype="bfloat16", max_logprobs=64)
    assert mod.made == [dict(model="runs/teacher", enable_lora=True, trust_remote_code=False, dtype="bfloat16",
                             max_logprobs=64)]
    assert isinstance(engine, VLLMEngine) and engine.llm is llm and engine.name == "vllm"
    engine.generate([[1]], max_new_tokens=1, adapter="t")
    assert llm.calls[0].lora.args == ("t", 1, "/t")


def test_missing_vllm_is_a_plain_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails even where it is installed
    with pytest.raises(DoublebindError, match="vLLM is not installed"):
        VLLMEngine(object())
    with pytest.raises(DoublebindError, match="vLLM is not installed"):
        make_engine("vllm", model_path="m", eos_id=2, pad_id=0)


def test_make_engine_rejects_what_it_cannot_honour(model):
    with pytest.raises(DoublebindError, match="unknown engine 'sglang'.*hf, vllm"):
        make_engine("sglang", model=model, eos_id=2, pad_id=0)
    with pytest.raises(DoublebindError, match="needs a loaded model"):
        make_engine("hf", model_path="m", eos_id=2, pad_id=0)
    with pytest.raises(DoublebindError, match="gpu_memory_utilization"):
        make_engine("hf", model=model, eos_id=2, pad_id=0, gpu_memory_utilization=0.5)
    assert isinstance(make_engine("hf", model=model, eos_id=2, pad_id=0), HFEngine)


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(max_new_tokens=0),
                                 dict(logprobs=-1), dict(prompts=[[1], []])])
def test_bad_arguments_are_errors_on_both_engines(model, bad):
    args = dict(prompts=[[1, 2]], max_new_tokens=3) | bad
    prompts = args.pop("prompts")
    llm = FakeLLM([([3], None)])
    for engine in (HFEngine(model, eos_id=63, pad_id=PAD), VLLMEngine(llm, vllm_module=fake_vllm())):
        with pytest.raises(DoublebindError):
            engine.generate(prompts, **args)
    assert llm.calls == []
