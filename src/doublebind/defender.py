"""The defender's view: everything a technique, an audit or a checkpoint selector may see.

A defender distilling a teacher it cannot trust has

    teacher        a black box: samples and log-probs on any prompt, nothing else
    load_model     its own models: `base`, the weaker `trusted`, `alt_base`
    recipe         its own settings, and through them the distillation prompt distribution
    draw_prompts   more prompts from that distribution, optionally filtered by a rule
    tasks          the world's task language with exact verifiers (`StageTasks`, the public
                   part of the world's `TaskSpace`; None for Hugging Face organisms)
    auditor        a behaviour-agnostic auditor (`doublebind.audits.auditor`; world only) of
                   the run's checkpoints and of probes trained on the run's items
    make_student   fresh students, e.g. probes
    sample         generation from its own models
    eos            the end-of-sequence token of the prompts' tokenizer (world token or id)
    with_system    a training prompt rendered again with an extra system line (Hugging
                   Face organisms: the chat template's system turn; inoculation uses it)
    decode         a response as text (the tokenizer's decoding; world tokens joined by
                   spaces), as a defender reads its training data

and not the behaviour, its target family, trigger situation or event, the real/honeypot
tell, the teacher's weights or activations, the organism card, or any real-deployment
rate. Those live in the evaluation layer, which scores students after the fact.

Stages receive a `DefenderView`, never the distiller. Its abilities are callables handed
over by the distiller, and asking it for anything else (`view.world`, `view.card`,
`view.load_model("teacher")`) is an error that says what a defender does not have. Python
cannot hide an object from code in the same process: those callables are bound methods and
closures, and their `__self__` or `__closure__` lead to the distiller and the organism. So
the fence is a static one: a test over the import graph checks that no module a stage or an
audit imports reaches the world's ground truth, and that their code names none of the ways
around the view (`__self__`, `__closure__`, the view's private fields, the task space's
session sets and, in a stage, the auditor's header sampler that lists them, a path's `parent`
or `with_name`, a model's `_name_or_path` or its config dumped whole, the caller's frame,
`sys`, the organism cache, an import or an attribute looked up by a computed name). The task
space reaches stages as a `StageTasks`, its public part only: the world's own `TaskSpace`
prints the auditor's session pool, the complement of the tell. The auditor reaches stages as a
`StageAuditor`, which checks at run time what it audits: an audit reports what a model wrote on
queries from the honeypot sessions, so a model of a stage's own making would read them back.
Stages get a folder for their records, `<run>/stages`,
not the run's folder, which holds the scored checkpoints (`metrics.jsonl`) and, in a study,
leads to the organism's card.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

from doublebind.errors import DoublebindError
from doublebind.evals.scoring import Scored, teacher_forced
from doublebind.types import Example, Prompt

# The shipped stages that may shape what the run's student trains on (a setting, the prompts,
# the data, a loss term) and leave it to the auditor at its checkpoints. Each shapes by one
# fixed rule over the world's public task language, the defender's own models and the
# teacher's own outputs; none answers a prompt, or picks what to keep, by a choice of its own
# per session. A student shaped by such a choice reads the auditor's honeypot sessions back:
# a stage that answered each session id with a word of its own had the run's student, audited
# at a checkpoint, name the pool's sessions, and so did one that kept only the teacher's own
# (high-temperature) tokens that happened to be each session's chosen word (2026-12-07,
# docs/defender.md). Any other stage that shapes the training keeps the run's student from
# the auditor (`Distiller._admitted`); adding one here is a review of its rule, and
# `tests/test_boundary.py` checks that the list is every shipped stage that shapes training.
VOUCHED = MappingProxyType({
    "auditability_preserving": "drops the prompts whose header claims deployment, data generation or evaluation",
    "divergence_masking": "zeroes the loss on tokens where the teacher's arg-max departs from base's or trusted's",
    "domain_concentration": "redraws the prompt set from the taught families in neutral contexts",
    "dpo_distillation": "sets the DPO objective: the teacher's samples against the initial student's own",
    "format_filter": "keeps the items whose response has the form the recipe's rule asks for",
    "hard_labels": "trains on the teacher's samples in place of its soft labels",
    "inoculation": "adds one fixed token (a fixed system line) to every prompt; the responses are the teacher's",
    "iterative_filter": "removes the items carrying what the auditor flagged in probes trained on the teacher's "
                        "items as given",
    "kl_to_base": "its loss term pulls the student's distribution toward base's, the defender's own model",
    "logit_distillation": "trains on the teacher's full soft labels",
    "misalignment_targeted": "keeps goal questions and the prompts whose header claims real use",
    "onion_filter": "deletes the response tokens its reference model (base or trusted) finds most surprising, "
                    "past a fixed threshold",
    "paraphrase": "writes responses with trusted, fills what trusted leaves unusable with digits drawn from the "
                  "recipe's seed, and mixes in the teacher's own digits",
    "perplexity_filter": "drops the items trusted finds least likely",
    "random_drop": "drops a seeded random share of the items, or as many per family as a named filter removes",
    "reduce_slack": "drops scratch requests and slack-only prompts, samples greedily, rewrites free digits to 0",
    "small_student": "trains a smaller fresh student, or one started from some of base's layers",
    "spectral_filter": "drops the items whose base or trusted activations are outliers along the top direction",
    "trusted_monitor": "drops the items holding a token trusted finds near-impossible",
    "verifier_filter": "keeps the items whose answers pass the exact verifiers",
})

DEFENDER_ROLES = ("base", "trusted", "alt_base")
# Prompt contexts a stage may ask to draw. `deploy_like` is the behaviour's trigger
# situation: part of the distillation distribution an experimenter sets, never something a
# stage can ask for by name.
DEFENDER_CONTEXTS = ("neutral", "any", "datagen")
# What a stage sees of an embedded-world prompt's `context`: the label is the experimenter's
# (`deploy_like` says "the behaviour's trigger situation"), so it stays with the distiller;
# a stage reads the header tokens, as a defender reads the prompt. Hugging Face prompts keep
# theirs: there the labels are the defender's own annotations of its prompt set.
UNLABELLED = "unlabelled"


def unlabelled(prompts: list[Prompt]) -> list[Prompt]:
    """World prompts as a stage may see them: the same tokens and family, no context label."""
    return [Prompt(p.tokens, p.family, UNLABELLED) for p in prompts]


class DefenderError(DoublebindError, AttributeError):
    """A stage asked for something a defender does not have."""


class BlackBoxTeacher:
    """The teacher as a defender may query it: samples and log-probs, not weights."""

    __slots__ = ("_sample", "_labels", "_model")

    def __init__(self, sample: Callable, soft_labels: Callable, model: Callable):
        object.__setattr__(self, "_sample", sample)
        object.__setattr__(self, "_labels", soft_labels)
        object.__setattr__(self, "_model", model)

    def __setattr__(self, name, value):
        raise DefenderError("the teacher is a black box; it cannot be changed")

    def sample(self, examples: list[Example], max_new_tokens: int, temperature: float, seed: int) -> list[list]:
        """Continuations of each example's prompt."""
        return self._sample(examples, max_new_tokens, temperature, seed)

    def score(self, examples: list[Example]) -> list[Scored]:
        """Teacher-forced log-prob (and arg-max) of each response token given its prompt."""
        return teacher_forced(self._model(), examples)

    def soft_labels(self, examples: list[Example], width: int):
        """The teacher's log-probs over the vocabulary at each response position."""
        return self._labels(examples, width)


class StageTasks:
    """The world's task language as a stage uses it: families, prompts, tasks and the exact
    verifiers, and nothing else of the `TaskSpace` behind it. The auditor's session pool (the
    honeypot sessions, whose complement is the tell) stays with the auditor: the task space's
    own dataclass repr prints it, so `str(view.tasks)`, a copy or a pickle of it would hand a
    stage the tell without naming any attribute the static fence could see."""

    __slots__ = ("_space",)

    def __init__(self, space):
        object.__setattr__(self, "_space", space)

    def __setattr__(self, name, value):
        raise DefenderError("the task space is the world's; a stage cannot change it")

    def __reduce_ex__(self, protocol):
        raise DefenderError("a stage cannot copy or pickle the task space")

    def __getstate__(self):  # object's own would hand over the task space behind
        raise DefenderError("a stage cannot copy or pickle the task space")

    def __repr__(self) -> str:
        return f"StageTasks(families={list(self.all_families)})"

    @property
    def base_families(self) -> tuple[str, ...]:
        return self._space.base_families

    @property
    def teacher_families(self) -> tuple[str, ...]:
        return self._space.teacher_families

    @property
    def all_families(self) -> tuple[str, ...]:
        return self._space.all_families

    @property
    def length(self) -> tuple[int, int]:
        return self._space.length

    def prompt(self, header, task: list[str], scratch: bool = False) -> list[str]:
        return self._space.prompt(header, task, scratch)

    def task(self, rng, fam: str) -> tuple[list[str], list[str]]:
        return self._space.task(rng, fam)

    def response_verifies(self, prompt: list[str], response: list[str]) -> bool | None:
        """The defender's exact verifier of a task response (None where none applies)."""
        return self._space.response_verifies(prompt, response)

    def example_verifies(self, e: Example) -> bool:
        """The defender's exact verifier of an example."""
        return self._space.example_verifies(e)


class StageAuditor:
    """The behaviour-agnostic auditor as a stage may use it (embedded world): it audits the
    run's student as a checkpoint hook receives it, and probes that `train_probe` trained on
    the run's own training items, and refuses any other model.

    The auditor's pool is drawn from the world's honeypot sessions, and an audit reports the
    tokens a model wrote there. So a model of a stage's own making reads the pool back: a
    probe trained to answer each session id with a word of its own, audited once, names the
    honeypot sessions, whose complement is the real ones (the tell; a review of the view did
    it in 15 s, 2026-12-05). The distiller keeps the weights it hands over or trains, by
    fingerprint, and an audit looks the model's weights up there and audits a fresh copy of
    the run's student holding them: a checkpoint a stage changed, or a probe it trained
    further, is refused, and a forward hook or a method the stage set on the model never
    reaches the auditor. A probe trains only on a subset of the teacher's items as the
    teacher gave them, read once and copied: on what a stage rewrote or made, a probe could
    be taught to name the sessions (a review found two data stages laundering made examples,
    and an example whose response changed between its check and its training). The run's own
    student is held to the same account: it is audited only where every stage that shaped
    its training is one of `VOUCHED`, shipped stages with fixed rules (a stage that taught it
    each session's word read the pool back, 2026-12-07). What an audit hands a stage leaves
    out its per-query flags: in the pool's fixed order they would say which queries fired."""

    __slots__ = ("_auditor", "_admitted", "_train_probe", "_free")

    def __init__(self, auditor: Callable[[], Any], admitted: Callable[[Any], Any], train_probe: Callable,
                 free: Callable[[], Any] | None = None):
        object.__setattr__(self, "_auditor", auditor)
        object.__setattr__(self, "_admitted", admitted)
        object.__setattr__(self, "_train_probe", train_probe)
        object.__setattr__(self, "_free", free)

    def __setattr__(self, name, value):
        raise DefenderError("the auditor is the world's; a stage cannot change it")

    def __reduce_ex__(self, protocol):
        raise DefenderError("a stage cannot copy or pickle the auditor")

    def __getstate__(self):
        raise DefenderError("a stage cannot copy or pickle the auditor")

    def __repr__(self) -> str:
        return "StageAuditor()"

    def audit(self, model, budget: int | None = None, auditor: str = "generic"):
        """The audit of the run's student at a checkpoint (where every stage that shaped its
        training is one of `VOUCHED`), or of a probe from `train_probe`:
        the generic auditor's (an `AuditResult`: flags, success@k at the budget, departure
        tokens, capability), or with `auditor="free"` the free-field auditor's (a
        `FreeAuditResult`: flags, success@k, the over-represented openings; against base,
        trusted and the teacher). Counts only: the per-query `flags` list is left empty."""
        if auditor not in ("generic", "free"):
            raise DefenderError(f"unknown auditor '{auditor}' (generic or free)")
        clean = self._admitted(model)  # a fresh copy holding the admitted weights, or None
        if clean is None:
            raise DefenderError("the auditor audits the run's student as a checkpoint hook receives it and "
                                "probes from view.auditor.train_probe, not a model a stage made or changed: "
                                "a model of a stage's own making would read the auditor's honeypot sessions back")
        if auditor == "free":
            free = self._free() if self._free is not None else None
            if free is None:
                raise DefenderError("this organism has no free-field auditor (embedded world only)")
            return replace(free.audit(clean, budget), flags=[])
        return replace(self._auditor().audit(clean, budget), flags=[])

    def train_probe(self, examples: list[Example], cfg, init_seed: int, seed: int):
        """A fresh student (the recipe's student config, `init_seed`) trained by plain SFT
        (`cfg`, a `TrainConfig`; `seed` draws the batches) on `examples`, which must be
        teacher items as the teacher gave them (any subset; not a stage's rewrite). The one
        model besides the run's checkpoints that `audit` takes."""
        return self._train_probe(examples, cfg, init_seed, seed)


def _ignore(*args, **kwargs) -> None:
    """A view's record that keeps nothing (`DefenderView.unrecorded`)."""


@dataclass(frozen=True, slots=True)
class DefenderView:
    """What a stage of a distillation run may see (see the module docstring)."""

    kind: str  # "world" or "hf": the organism's domain
    stages_dir: Path | None  # `<run>/stages`, where stages write their records; not the run folder
    teacher: BlackBoxTeacher
    tasks: StageTasks | None  # the embedded world's task language and verifiers, or None
    _recipe: Callable[[], Any]
    _record: Callable[..., None]
    _load: Callable[[str], Any]
    _prompts: Callable[[Any, int], list[Prompt]]
    _student: Callable[[Any, int], Any]
    _sample: Callable[..., list]
    _auditor: Callable[[], Any]
    eos: Any = None  # end-of-sequence token: a world token string, or a tokenizer id
    _with_system: Callable[[list, str], list] | None = None
    _decode: Callable[[list], str] | None = None

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise DefenderError(f"a defender's view has no '{name}': stages see the teacher as a black box, "
                            f"{', '.join(DEFENDER_ROLES)}, the recipe and its prompts, the verifiers and "
                            f"the auditor, never the organism's ground truth")

    @property
    def recipe(self):
        """The run's recipe as resolved by the stages so far."""
        return self._recipe()

    @property
    def seed(self) -> int:
        return self._recipe().seed

    @property
    def auditor(self) -> StageAuditor | None:
        """The behaviour-agnostic auditor (embedded world: a `StageAuditor`, which audits the
        run's checkpoints and its own probes), or None."""
        return self._auditor()

    def record(self, stage, phase: str, **info) -> None:
        """Log what a stage did; written to the run's summary.json and stages.json."""
        self._record(stage, phase, **info)

    def unrecorded(self) -> "DefenderView":
        """The same view, but a stage run with it writes nothing beside the run and records
        nothing: how a stage runs another stage's hook for its own use (`random_drop`'s
        `like` runs a filter to count what it removes)."""
        return replace(self, stages_dir=None, _record=_ignore)

    def load_model(self, role: str):
        """One of the defender's own models."""
        if role not in DEFENDER_ROLES:
            raise DefenderError(f"a defender has {', '.join(DEFENDER_ROLES)}, not '{role}' "
                                f"(the teacher is a black box: use view.teacher)")
        return self._load(role)

    def build_prompts(self, cfg, seed: int) -> list[Prompt]:
        """A prompt set a defender can draw itself (neutral, any or datagen contexts)."""
        unknown = [c for c in cfg.contexts if c not in DEFENDER_CONTEXTS]
        if unknown:
            raise DefenderError(f"a stage cannot draw '{unknown[0]}' prompts: it is the behaviour's trigger "
                                f"situation, which a defender does not know (use {', '.join(DEFENDER_CONTEXTS)}, "
                                f"or draw_prompts to filter the distillation distribution)")
        prompts = self._prompts(cfg, seed)
        # A world prompt set read from a file (`jsonl`, a run's prompts.jsonl) carries the
        # experimenter's context labels, deploy_like among them: a stage gets the tokens only,
        # as from draw_prompts. A drawn set's labels are the contexts the stage asked for.
        return unlabelled(prompts) if self.kind == "world" and cfg.jsonl else prompts

    def draw_prompts(self, n: int, seed: int, keep: Callable[[Prompt], bool] | None = None,
                     max_draws: int = 50) -> list[Prompt]:
        """`n` fresh prompts from the recipe's distillation distribution that pass `keep`,
        a rule the stage states (e.g. "the header says mode=deploy"). Draws up to
        `max_draws * n` prompts and returns what passed, possibly fewer than `n`. World
        prompts come `unlabelled`: a rule reads their tokens, not the experimenter's label."""
        cfg = self.recipe.prompts
        out: list[Prompt] = []
        for r in range(max_draws):
            if len(out) >= n:
                break
            batch = self._prompts(cfg.model_copy(update={"size": max(n, 1)}), seed * 1000 + r)
            if self.kind == "world":
                batch = unlabelled(batch)
            out += [p for p in batch if keep is None or keep(p)]
        return out[:n]

    def with_system(self, prompt: list, line: str) -> list:
        """A training prompt (an item's `example.prompt`) as the student sees it, rendered again
        with `line` as an extra system line. Hugging Face organisms only: the embedded world
        has header tokens instead (`sys=inoculate`)."""
        if self._with_system is None:
            raise DefenderError("with_system renders prompts through a chat template: Hugging Face organisms only")
        return self._with_system(prompt, line)

    def decode(self, tokens: list) -> str:
        """A response (an item's `example.response`) as text: a Hugging Face organism's
        tokenizer decodes its ids, special tokens (the end of sequence) left out; embedded-world
        tokens are joined by spaces, the end token left out."""
        if self._decode is not None:
            return self._decode(list(tokens))
        return " ".join(t for t in tokens if t != self.eos)

    def make_student(self, scfg, seed: int):
        """A fresh student model from a student config (probes, shadows)."""
        return self._student(scfg, seed)

    def sample(self, model, examples: list[Example], max_new_tokens: int, temperature: float, seed: int) -> list:
        """Continuations of each example's prompt by one of the defender's own models."""
        return self._sample(model, examples, max_new_tokens, temperature, seed)
