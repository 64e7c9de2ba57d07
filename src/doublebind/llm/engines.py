"""Sampling engines: Hugging Face `generate`-style decoding by default, vLLM behind the same interface.

An engine turns prompts into completions:

    engine = make_engine("hf", model=model, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    gens = engine.generate(prompt_ids, max_new_tokens=256, temperature=1.0, seed=0, logprobs=20)
    gens[0].tokens   # completion ids, eos included if produced
    gens[0].topk     # per completion position, the model's top-20 (id, logprob), best first

Token ids in, token ids out. Tokenisation and chat templates stay with the caller, so the
teacher, the student and both engines see exactly the same ids: no engine re-tokenises text
(a round trip through text is not the identity for BPE tokenizers), and the top-k soft labels
are indexed by the same vocabulary the student is trained on.

Both engines agree on the meaning of every argument:
- temperature 0 is greedy; otherwise softmax(logits / temperature), cut to the top-p nucleus;
- `topk` holds the model's log-probs at temperature 1 (before temperature and top-p), as
  distillation wants them (vLLM's default `logprobs_mode="raw_logprobs"` gives the same);
- `adapter=None` is the base model, `adapter="name"` a LoRA adapter known to the engine;
- a fixed seed gives the same completions; repeated prompts still get independent samples.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import torch

from doublebind.errors import DoublebindError
from doublebind.sampling import _cache_of, _pick, left_pad

VLLM_MISSING = "vLLM is not installed; pip install 'doublebind[vllm]' (Linux + CUDA) or use engine: hf"
ENGINES = ("hf", "vllm")


@dataclass
class Generation:
    """One completion."""

    tokens: list[int]  # completion ids, eos included if produced
    topk: list[list[tuple[int, float]]] | None  # per position: top-k (id, logprob at T=1), sorted desc


class Engine(Protocol):
    """What sampling code needs from a model: completions for prompts, as token ids."""

    name: str

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, logprobs: int = 0,
                 adapter: str | None = None) -> list[Generation]: ...


def _check_args(prompts, max_new_tokens, temperature, top_p, logprobs) -> None:
    if any(len(p) == 0 for p in prompts):
        raise DoublebindError("every prompt needs at least one token (add BOS or a chat template)")
    if max_new_tokens < 1:
        raise DoublebindError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise DoublebindError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise DoublebindError(f"top_p must be in (0, 1], got {top_p}")
    if logprobs < 0:
        raise DoublebindError(f"logprobs must be >= 0, got {logprobs}")


# ---------------------------------------------------------------------------------------------
# Hugging Face


class HFEngine:
    """A loaded Hugging Face causal LM (optionally a peft model holding LoRA adapters).

    Decoding is our own batched KV-cache loop rather than `model.generate`, because
    `model.generate` (1) draws from the global torch RNG, (2) merges in the checkpoint's
    generation_config (top_k, repetition_penalty, extra eos ids), which would silently change
    the distribution and make it differ from vLLM's, and (3) gives no top-k log-probs without
    keeping full [steps, batch, vocab] scores. `doublebind.sampling.generate` is not reused
    as is either: it seeds a CPU generator, which `torch.multinomial` rejects for CUDA logits,
    it keeps the prefill logits of every prompt position (batch x length x vocab: 10-20 GB
    for 64 prompts of 512 tokens and a 150k vocabulary), and for a peft model it passes the cache as `past_key_values`,
    which transformers 5 deprecates. Its token picker `_pick` (temperature, top-p) is shared,
    so both samplers draw from the same distribution.

    Prompts are left-padded; positions count from each prompt's first real token, so padding
    does not change the result. Completions depend on the seed and on how prompts fall into
    batches of `batch_size` (one generator runs through the batches in order).
    """

    name = "hf"

    def __init__(self, model, eos_id: int, pad_id: int, batch_size: int = 64, as_is: bool = False):
        self.model, self.eos_id, self.pad_id, self.batch_size = model, eos_id, pad_id, batch_size
        # as_is: `adapter=None` generates from the model as it is, its active adapter on (a LoRA
        # student); else from the base weights, as vLLM does without a LoRA request
        self.as_is = as_is
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        # transformers 5.x renamed `past_key_values` to `cache`; accept either.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, logprobs: int = 0,
                 adapter: str | None = None) -> list[Generation]:
        """Completions for `prompts`, in order; see the module docstring for the arguments."""
        _check_args(prompts, max_new_tokens, temperature, top_p, logprobs)
        device = next(self.model.parameters()).device
        gen = torch.Generator(device=device).manual_seed(seed)
        out: list[Generation] = []
        with self._adapter(adapter), torch.no_grad():
            for i in range(0, len(prompts), self.batch_size):
                out += self._batch(prompts[i : i + self.batch_size], max_new_tokens, temperature, top_p,
                                   logprobs, gen, device)
        return out

    def _adapter(self, adapter: str | None):
        """Context in which the model is the base model (None) or has `adapter` active."""
        from peft import PeftModel

        if not isinstance(self.model, PeftModel) and getattr(self.model, "peft_config", None):
            # transformers' own adapter integration: its on/off switch differs; not supported.
            raise DoublebindError("engine hf takes adapters through peft.PeftModel (make_engine(lora_paths=...)), "
                                  "not transformers' load_adapter")
        loaded = self.model.peft_config if isinstance(self.model, PeftModel) else {}
        if adapter is None:
            # peft: base weights only, inside the block (unless the model is used as it is)
            return self.model.disable_adapter() if loaded and not self.as_is else contextlib.nullcontext()
        if adapter not in loaded:
            known = ", ".join(sorted(loaded)) or "none (not a peft model)"
            raise DoublebindError(f"unknown adapter {adapter!r} for engine hf; loaded adapters: {known}")
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def _batch(self, prompts, max_new, temperature, top_p, k, gen, device) -> list[Generation]:
        model, eos_id, pad_id = self.model, self.eos_id, self.pad_id
        b = len(prompts)
        ids, attn, pos = left_pad(prompts, pad_id, device)  # pos: [B, W]
        res = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **self._keep_last)
        past, logits, next_pos = _cache_of(res), res.logits[:, -1].to(device), pos[:, -1] + 1
        done = torch.zeros(b, dtype=torch.bool, device=device)
        steps, top_vals, top_ids = [], [], []
        for step in range(max_new):
            if k:
                lp = torch.log_softmax(logits.float(), dim=-1)  # [B, V], temperature 1
                v, i = lp.topk(min(k, lp.shape[-1]), dim=-1)  # [B, k], sorted desc
                top_vals.append(v)
                top_ids.append(i)
            tok = _pick(logits, temperature, top_p, gen)  # [B]
            tok = torch.where(done, torch.full_like(tok, pad_id), tok)
            steps.append(tok)
            done |= tok == eos_id
            if bool(done.all()) or step == max_new - 1:
                break
            attn = torch.cat([attn, torch.ones((b, 1), dtype=attn.dtype, device=device)], dim=1)
            res = model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                        use_cache=True, **{self._cache_arg: past})
            past, logits, next_pos = _cache_of(res), res.logits[:, -1].to(device), next_pos + 1
        toks = torch.stack(steps, dim=1).tolist()  # [B, T]
        if k:
            vals = torch.stack(top_vals, dim=1).tolist()  # [B, T, k]
            idxs = torch.stack(top_ids, dim=1).tolist()  # [B, T, k]
        outs = []
        for r, row in enumerate(toks):
            n = row.index(eos_id) + 1 if eos_id in row else len(row)
            topk = [list(zip(idxs[r][t], vals[r][t])) for t in range(n)] if k else None
            outs.append(Generation(tokens=row[:n], topk=topk))
        return outs



# ---------------------------------------------------------------------------------------------
# vLLM


def _import_vllm() -> Any:
    """`vllm` as a namespace with LLM, SamplingParams and LoRARequest; a plain error if absent."""
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ModuleNotFoundError as e:
        if e.name == "vllm":
            raise DoublebindError(VLLM_MISSING) from e
        raise DoublebindError(f"vLLM is installed but failed to import: {e}") from e
    except ImportError as e:
        raise DoublebindError(f"vLLM is installed but failed to import: {e}") from e
    return SimpleNamespace(LLM=vllm.LLM, SamplingParams=vllm.SamplingParams, LoRARequest=LoRARequest)


def request_seed(seed: int, index: int) -> int:
    """The seed of the `index`-th prompt of a call: vLLM seeds each request on its own, so one
    shared seed would give repeated prompts identical completions. A hash, not seed + index,
    so that neighbouring seeds do not share streams. Fits in 31 bits."""
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


class VLLMEngine:
    """A `vllm.LLM` (or any object with its `generate`), fed token ids.

    `lora_paths` maps adapter names to folders; the LLM must have been built with
    `enable_lora=True` (and `max_lora_rank` at least the adapters' rank). `eos_id`, when given,
    is also a stop token, so the engine stops where the HF engine does even when the
    checkpoint's own eos differs (e.g. a chat end-of-turn token). vLLM caps `logprobs` at its
    `max_logprobs` (20 by default; raise it with `LLM(max_logprobs=...)`).
    """

    name = "vllm"

    def __init__(self, llm, eos_id: int | None = None, lora_paths: dict[str, str] | None = None, *,
                 vllm_module=None):
        self.llm, self.eos_id = llm, eos_id
        self.lora_paths = dict(lora_paths or {})
        self.vllm = vllm_module if vllm_module is not None else _import_vllm()
        # vLLM wants a globally unique positive int per adapter.
        self._lora_ids = {name: i + 1 for i, name in enumerate(self.lora_paths)}

    def _lora_request(self, adapter: str | None):
        if adapter is None:
            return None
        if adapter not in self.lora_paths:
            known = ", ".join(self.lora_paths) or "none"
            raise DoublebindError(f"unknown adapter {adapter!r} for engine vllm; known adapters: {known}")
        return self.vllm.LoRARequest(adapter, self._lora_ids[adapter], self.lora_paths[adapter])

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, logprobs: int = 0,
                 adapter: str | None = None) -> list[Generation]:
        """Completions for `prompts`, in order; see the module docstring for the arguments."""
        _check_args(prompts, max_new_tokens, temperature, top_p, logprobs)
        if self.llm is None:
            raise DoublebindError("this vLLM engine was closed; make a new one")
        lora = self._lora_request(adapter)
        if not prompts:
            return []
        stop = {"stop_token_ids": [self.eos_id]} if self.eos_id is not None else {}
        params = [self.vllm.SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                           seed=request_seed(seed, i), logprobs=logprobs or None, **stop)
                  for i in range(len(prompts))]
        # Positional: some vLLM versions make `prompts` positional-only.
        results = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params,
                                    use_tqdm=False, lora_request=lora)
        if len(results) != len(prompts):
            raise DoublebindError(f"vLLM returned {len(results)} results for {len(prompts)} prompts")
        return [self._convert(r.outputs[0], logprobs) for r in results]

    def close(self) -> None:
        """Free the engine's GPU memory for the training that follows in the same process.

        Dropping the last reference is not enough when a cycle keeps the `LLM` alive (its
        engine core then keeps its KV cache, `gpu_memory_utilization` of the GPU): shut the
        engine core down where this vLLM has one, collect, and empty torch's cache."""
        import gc

        llm, self.llm = self.llm, None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if callable(getattr(core, "shutdown", None)):
            core.shutdown()
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _convert(self, completion, k: int) -> Generation:
        tokens = [int(t) for t in completion.token_ids]
        if self.eos_id is not None and self.eos_id in tokens:
            tokens = tokens[: tokens.index(self.eos_id) + 1]
        if not k:
            return Generation(tokens=tokens, topk=None)
        if completion.logprobs is None or len(completion.logprobs) < len(tokens):
            raise DoublebindError("vLLM returned no log-probs for some completion positions")
        topk = []
        for pos in list(completion.logprobs)[: len(tokens)]:  # dict token id -> Logprob
            # vLLM adds the sampled token when it is outside the top k: sort, then keep k.
            ranked = sorted(((int(t), float(lp.logprob)) for t, lp in pos.items()), key=lambda x: (-x[1], x[0]))
            topk.append(ranked[:k])
        return Generation(tokens=tokens, topk=topk)


# ---------------------------------------------------------------------------------------------


def make_engine(kind: str, *, model=None, model_path: str | None = None, eos_id: int, pad_id: int,
                lora_paths: dict[str, str] | None = None, vllm_module=None, **vllm_kwargs) -> Engine:
    """An engine by name.

    hf: wraps the loaded `model`; `lora_paths` adapters are loaded into it with peft (so both
    engines take adapters the same way); `model_path` is not used.
    vllm: builds `vllm.LLM(model=model_path, ...)` with `vllm_kwargs` (e.g. dtype,
    gpu_memory_utilization, max_lora_rank, max_logprobs); `model` and `pad_id` are not used.
    """
    if kind == "hf":
        if model is None:
            raise DoublebindError("engine hf needs a loaded model")
        if vllm_kwargs:
            raise DoublebindError(f"engine hf takes no vLLM options, got: {', '.join(sorted(vllm_kwargs))}")
        if lora_paths:
            model = _load_adapters(model, lora_paths)
        return HFEngine(model, eos_id=eos_id, pad_id=pad_id)
    if kind == "vllm":
        if model_path is None:
            raise DoublebindError("engine vllm needs model_path (a folder or hub id); it loads the weights itself")
        mod = vllm_module if vllm_module is not None else _import_vllm()
        llm = mod.LLM(model=str(model_path), enable_lora=bool(lora_paths), trust_remote_code=False, **vllm_kwargs)
        return VLLMEngine(llm, eos_id=eos_id, lora_paths=lora_paths, vllm_module=mod)
    raise DoublebindError(f"unknown engine {kind!r}; known engines: {', '.join(ENGINES)}")


def _load_adapters(model, lora_paths: dict[str, str]):
    from peft import PeftModel

    items = list(lora_paths.items())
    for name, path in items:  # folders of safetensors only: given a hub id or pickles, PEFT would unpickle
        if not Path(path).is_dir() or not any(Path(path).glob("*.safetensors")):
            raise DoublebindError(f"adapter {name!r}: {path} is not a folder holding safetensors weights (an "
                                  f"engine loads adapters from such folders only; a hub adapter through its "
                                  f"organism config, which fetches its safetensors)")
    name, path = items[0]
    if isinstance(model, PeftModel):
        model.load_adapter(str(path), adapter_name=name)
    else:
        model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
    for name, path in items[1:]:
        model.load_adapter(str(path), adapter_name=name)
    return model.eval()
