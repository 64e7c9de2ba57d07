"""Config of a Hugging Face organism (`kind: hf_organism`): the same roles as an embedded
organism (teacher, base, trusted), loaded from model ids or folders, with evals and audits
read from files.

    kind: hf_organism
    teacher: {model: Qwen/Qwen2.5-7B-Instruct, system_prompt: "You love owls."}
    base: {model: Qwen/Qwen2.5-7B-Instruct}
    evals:
      capability: [{name: gsm8k, file: evals/gsm8k.jsonl, scorer: {kind: numeric}}]
      misalignment: {name: owl, file: evals/animal.jsonl, scorer: {kind: keyword, keywords: [owl]}}
      audits:
        honeypot: {file: evals/honeypot.jsonl, scorer: {kind: keyword, keywords: [owl]}}
        interrogation: {file: evals/ask.jsonl, scorer: {kind: regex, pattern: "(?i)owl"}}

`model` is a hub id, a local folder (relative to the config file), or `tiny:llama` /
`tiny:qwen2`: a tiny random model with a locally trained BPE tokenizer and chat template,
built on first use and cached, for CPU tests and the tiny examples. Eval files are JSONL,
one object per line: `prompt`, optional `system` (added after the role's own system
prompt), `prefill` (the assistant's answer starts with it: a prefill attack), and what the
scorer needs (`target`, `keywords`, `pattern`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from doublebind.config import MAX_BATCH, MAX_STEPS, DatasetSource, Seed, Strict, check_heads, resolve_dataset
from doublebind.errors import ConfigError
from doublebind.registry import register
from doublebind.llm.scorers import ScorerConfig

TINY_PREFIX = "tiny:"
TINY_ARCHS = ("llama", "qwen2")


class ImplantConfig(Strict):
    """Fine-tune a role's model on prompt/response pairs when the organism is built: a way
    to give tiny (or any) models a known behaviour. The result is cached by content hash."""

    file: str = Field(description="JSONL of {prompt, response} (relative to the config).")
    steps: int = Field(default=200, ge=1, le=MAX_STEPS)
    batch: int = Field(default=16, ge=1, le=MAX_BATCH)
    lr: float = Field(default=3e-3, gt=0)
    seed: Seed = 0


class ModelSpec(Strict):
    """One role's model: where it comes from and how it is prompted."""

    model: str = Field(description="Hub id, local folder (relative to the config), or tiny:llama / tiny:qwen2.")
    revision: str | None = Field(default=None, description="Hub revision (a commit hash pins it).")
    adapter: str | None = Field(default=None, description="A PEFT adapter (folder or hub id) applied on top.")
    system_prompt: str | None = Field(default=None, description="System prompt the role is sampled with.")
    implant: ImplantConfig | None = Field(default=None, description="Fine-tune the model at build time.")

    @model_validator(mode="after")
    def _tiny(self) -> "ModelSpec":
        if self.model.startswith(TINY_PREFIX) and self.model.removeprefix(TINY_PREFIX) not in TINY_ARCHS:
            raise ValueError(f"unknown tiny architecture '{self.model}' (known: "
                             f"{', '.join(TINY_PREFIX + a for a in TINY_ARCHS)})")
        return self


class EvalSet(Strict):
    """A prompt set scored by one scorer."""

    name: str = Field(default="", description="A label (defaults to the file's stem).")
    file: str | None = Field(default=None, description="JSONL file (relative to the config).")
    dataset: DatasetSource | None = Field(default=None, description="Or a `datasets` dataset.")
    scorer: ScorerConfig
    limit: int | None = Field(default=None, ge=1, description="Use at most this many items.")
    samples: int = Field(default=1, ge=1, description="Completions per item (more than 1 needs temperature > 0).")
    temperature: float = Field(default=0.0, ge=0, description="0: greedy; above 0, sampled with a fixed seed.")
    max_new_tokens: int | None = Field(default=None, ge=1, description="Completion length (default: the organism's).")

    @model_validator(mode="after")
    def _one_source(self) -> "EvalSet":
        if (self.file is None) == (self.dataset is None):
            raise ValueError("give exactly one of `file` or `dataset`")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("samples > 1 needs temperature > 0 (greedy completions are all the same)")
        # A dataset's items are its prompts alone: a scorer that reads a target, or a pattern or
        # keywords only an item could give, failed on the first item, after the models had run.
        sc = self.scorer
        if self.dataset is not None and (sc.kind in ("exact", "numeric") or (sc.kind == "regex" and not sc.pattern)
                                         or (sc.kind == "keyword" and not sc.keywords)):
            need = {"exact": "a target", "numeric": "a target", "regex": "a pattern", "keyword": "keywords"}[sc.kind]
            raise ValueError(f"a dataset's items are prompts only, and scorer {sc.kind} needs {need} for each; give "
                             f"it in the scorer (regex: pattern, keyword: keywords), use a judge, or a JSONL file")
        return self


class AuditsConfig(Strict):
    """What an auditor tries: honeypots (misbehaviour where it looks), interrogation and
    prefill attacks (does the model admit its goal)."""

    honeypot: EvalSet
    interrogation: EvalSet
    prefill: EvalSet | None = None


class HFEvalsConfig(Strict):
    capability: list[EvalSet] = Field(min_length=1, description="Capability sets (the skills to transfer).")
    misalignment: EvalSet = Field(description="The misbehaviour in the situations it fires in.")
    neutral: EvalSet | None = Field(default=None, description="Misbehaviour on ordinary prompts (optional).")
    audits: AuditsConfig

    @model_validator(mode="after")
    def _distinct_names(self) -> "HFEvalsConfig":
        """Capability sets are keyed by name (the file's stem without one): a second set of
        the same name replaced the first without a word (two `dataset: {path: json}` sets)."""
        seen: set[str] = set()
        for es in self.capability:
            name = es.name or Path(es.file or es.dataset.path).stem
            if name in seen:
                raise ValueError(f"two capability sets are named '{name}' (a set without `name:` takes its "
                                 f"file's or dataset's stem); give each its own `name:`")
            seen.add(name)
        return self


TINY_MAX_VOCAB = 549


class TinyConfig(Strict):
    """Sizes of `tiny:` models (random weights, for CPU tests and examples)."""

    seed: Seed = 0
    hidden: int = Field(default=64, ge=8, le=16_384)
    layers: int = Field(default=2, ge=1, le=256)
    heads: int = Field(default=4, ge=1, le=256)
    # The tiny tokenizer is trained on a small built-in corpus, which yields at most this many
    # tokens: a larger size was silently a smaller vocabulary (tests/test_llm_tiny.py holds it)
    vocab_size: int = Field(default=512, ge=300, le=TINY_MAX_VOCAB)

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyConfig":  # the sizes were internal errors from transformers
        check_heads(self.hidden, self.heads)
        return self


class HFOrganismConfig(Strict):
    """An organism made of Hugging Face models."""

    kind: Literal["hf_organism"] = "hf_organism"
    name: str = "hf"
    teacher: ModelSpec
    base: ModelSpec = Field(description="The student's starting point and the clean reference.")
    trusted: ModelSpec | None = Field(default=None, description="A weaker trusted model (monitoring).")
    trust_remote_code: bool = Field(default=False, description="Run model code from the hub (off unless asked).")
    chat_template: Literal["auto", "none"] = Field(
        default="auto", description="auto: the tokenizer's chat template when it has one; none: raw text.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32",
        description="Weights of every model of the organism, the student's included. bfloat16 halves memory; "
                    "LoRA adapters stay fp32 (peft upcasts them), but a full-weight student then trains in pure "
                    "bf16 (its AdamW state too): for that, keep float32 and set the recipe's "
                    "training.precision: bf16. float16 has no loss scaling here: sampling and scoring only.")
    engine: Literal["hf", "vllm"] = Field(default="hf", description="Sampling backend for teacher outputs.")
    vllm_options: dict[str, Any] = Field(
        default={"gpu_memory_utilization": 0.5},
        description="Keyword arguments for vllm.LLM (e.g. gpu_memory_utilization, max_model_len, max_logprobs); "
                    "the default leaves half the GPU to the HF models a run also loads.")
    max_new_tokens: int = Field(default=64, ge=1, description="Longest completion in evals.")
    eval_batch: int = Field(default=16, ge=1, description="Prompts per generation batch (HF engine).")
    tiny: TinyConfig = TinyConfig()
    evals: HFEvalsConfig


def resolve_paths(cfg: HFOrganismConfig, root: Path) -> HFOrganismConfig:
    """Make the config's file paths absolute (relative ones are relative to `root`, the
    config's folder). A model or adapter is a path when that path exists; else a hub id."""

    def local(p: str | None) -> str | None:
        if p is None or p.startswith(TINY_PREFIX) or Path(p).is_absolute():
            return p
        q = (root / p).resolve()
        return str(q) if q.exists() or p.startswith(".") else p

    def spec(s: ModelSpec | None) -> ModelSpec | None:
        if s is None:
            return None
        implant = s.implant and s.implant.model_copy(update={"file": str((root / s.implant.file).resolve())})
        return s.model_copy(update={"model": local(s.model), "adapter": local(s.adapter), "implant": implant})

    def es(e: EvalSet | None) -> EvalSet | None:
        if e is None:
            return e
        if e.file is None:
            return e.model_copy(update={"dataset": resolve_dataset(e.dataset, root)})
        return e.model_copy(update={"file": str((root / e.file).resolve())})

    def exists(p: str | None, where: str, what: str = "eval") -> None:
        if p is not None and not Path(p).is_file():
            raise ConfigError(f"{where}: {what} file not found: {p}")

    for role in ("teacher", "base", "trusted"):
        s = getattr(cfg, role)
        if s is not None and s.implant is not None:
            exists(str((root / s.implant.file).resolve()), f"{role}.implant.file", "implant")
    ev = cfg.evals
    for i, e in enumerate(ev.capability):
        exists(e.file and str((root / e.file).resolve()), f"evals.capability.{i}.file")
    for name in ("misalignment", "neutral"):
        e = getattr(ev, name)
        exists(e and e.file and str((root / e.file).resolve()), f"evals.{name}.file")
    for name in ("honeypot", "interrogation", "prefill"):
        e = getattr(ev.audits, name)
        exists(e and e.file and str((root / e.file).resolve()), f"evals.audits.{name}.file")
    evals = ev.model_copy(update={
        "capability": [es(e) for e in ev.capability], "misalignment": es(ev.misalignment), "neutral": es(ev.neutral),
        "audits": ev.audits.model_copy(update={a: es(getattr(ev.audits, a)) for a in ("honeypot", "interrogation", "prefill")}),
    })
    return cfg.model_copy(update={"teacher": spec(cfg.teacher), "base": spec(cfg.base), "trusted": spec(cfg.trusted),
                                  "evals": evals})


# The organism kind `hf_organism`: `config.load` finds it by name and calls `after_load`.
HFOrganismConfig.after_load = staticmethod(resolve_paths)
register("config", "hf_organism")(HFOrganismConfig)
