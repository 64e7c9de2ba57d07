"""Where an organism's models, prompts, teacher outputs and evals come from.

The distiller drives one loop for every organism; what differs between the embedded world
and Hugging Face models sits behind this small interface:

    card, teacher, teacher_families      the organism
    load_model(role)                     base, trusted, alt_base, teacher
    prompts(cfg, seed)                   the prompt set of a recipe
    teacher_outputs(prompts, cfg, seed)  samples and soft labels, cached by content hash
    examples(outputs)                    training examples as the student sees them
    student(cfg, seed)                   the student's initial model
    sample(model, examples, ...)         continuations of the examples' prompts
    evaluate(model, n, role)             the metrics every run row carries

`open_domain` picks the implementation from the organism card: `WorldDomain` here, or
`doublebind.llm.organism.HFDomain` for `kind: hf` cards.
"""

from __future__ import annotations

import json
from pathlib import Path

from doublebind.errors import DoublebindError
from doublebind.memo import WeightsMemo
from doublebind.registry import register
from doublebind.cards import CARD, cache_root
from doublebind.organisms.models import load_checkpoint
from doublebind.world import vocab


def read_card(organism_dir: Path, verified: bool = True) -> dict:
    """An organism's card; with `verified`, only a verified organism's."""
    card_path = Path(organism_dir) / CARD
    if not card_path.is_file():
        raise DoublebindError(f"no organism at {organism_dir} (missing {CARD})")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError:
        raise DoublebindError(f"{card_path} is not valid JSON") from None
    except UnicodeDecodeError:
        raise DoublebindError(f"{card_path} is not a text file") from None
    if not isinstance(card, dict) or not isinstance(card.get("models"), dict) or "organism_hash" not in card:
        raise DoublebindError(f"{card_path} is not an organism card (no organism_hash or models)")
    if verified and not card.get("verified"):
        raise DoublebindError(f"organism at {organism_dir} is not verified; rebuild it")
    return card


def open_domain(organism_dir: Path):
    """The organism's domain, after checking its model files against the card's hashes (a
    corrupt file is refused by name, never loaded)."""
    from doublebind.integrity import CorruptCacheError, verify_organism_models

    card = read_card(organism_dir)
    try:
        verify_organism_models(Path(organism_dir), card)
    except CorruptCacheError as e:
        raise CorruptCacheError(f"{e}; rebuild the organism (doublebind organism build) or restore it") from None
    from doublebind.organisms.kinds import kind_of_card

    return kind_of_card(card).open(Path(organism_dir), card)


class WorldDomain:
    """An embedded-world organism: word-token models with exact, teacher-forced evals."""

    kind = "world"
    max_new_tokens = 32
    eos = vocab.EOS

    def __init__(self, organism_dir: Path, card: dict):
        from doublebind.world.data import world_for

        self.dir, self.card = organism_dir, card
        self.world = world_for(organism_dir / "teacher")
        self._models = {"teacher": load_checkpoint(organism_dir / "teacher")}

    @property
    def teacher(self):
        return self._models["teacher"]

    @property
    def teacher_families(self) -> tuple[str, ...]:
        return self.world.teacher_families

    def load_model(self, role: str):
        if role not in self._models:
            self._models[role] = load_checkpoint(self.dir / role)
        return self._models[role]

    def prompts(self, cfg, seed: int):
        from doublebind.prompts import build_prompts

        return build_prompts(self.world, cfg, seed)

    def teacher_outputs(self, prompts, scfg, seed: int):
        from doublebind.teacher import teacher_outputs

        if scfg.max_new_tokens > self.max_new_tokens:
            raise DoublebindError(f"sampling.max_new_tokens: at most {self.max_new_tokens} in the embedded world")
        return teacher_outputs(self.teacher, self.card["organism_hash"], prompts, scfg, seed, cache_root())

    def examples(self, outputs):
        return outputs.examples()

    def student(self, scfg, seed: int):
        from doublebind.students import make_student

        return make_student(scfg, self.dir, seed)

    def sample(self, model, examples, max_new_tokens: int, temperature: float, seed: int) -> list[list[str]]:
        """Continuations of each example's prompt (an empty one becomes a lone <eos>)."""
        from doublebind.sampling import generate

        ids = vocab.token_ids()
        outs = generate(model, [vocab.encode(e.prompt) for e in examples], max_new_tokens,
                        eos_id=ids[vocab.EOS], pad_id=ids[vocab.PAD], temperature=temperature, seed=seed)
        return [vocab.decode(o) for o in outs]

    def soft_labels(self, model, examples, width: int):
        from doublebind.teacher import soft_labels

        return soft_labels(model, examples, width, "full")["logprobs"]

    def evaluate(self, model, n_prompts: int, role: str = "student") -> dict:
        """The ground-truth metrics; a model with the weights of one already evaluated in this
        process (a student at step 0 is base) gets the same numbers without the work."""
        from doublebind.evals.metrics import evaluate

        return _EVALS.get(model, (self.card["organism_hash"], n_prompts),
                          lambda: evaluate(model, self.world, n_prompts))

    def task_space(self):
        """The world's public task language (what a defender knows of it)."""
        return self.world.task_space()

    def auditor(self):
        """The organism's behaviour-agnostic auditor, built once per process and organism
        (its base and trusted answers are computed once)."""
        key = (self.card["organism_hash"], str(self.dir.resolve()))
        if key not in _AUDITORS:
            from doublebind.audits.auditor import Auditor
            from doublebind.config import AuditConfig

            cfg = AuditConfig.model_validate(self.card["config"].get("audit", {}))
            _AUDITORS[key] = Auditor(self.task_space(), cfg, self.load_model("base"), self.load_model("trusted"))
        return _AUDITORS[key]


_AUDITORS: dict = {}
_EVALS = WeightsMemo()


@register("organism", "world")
class WorldOrganisms:
    """world: the embedded synthetic world's organisms (tiny models with exact ground truth)."""

    name, config_kind, verified = "world", "organism", True

    def organism_hash(self, cfg) -> str:
        from doublebind.organisms.build import organism_hash

        return organism_hash(cfg)

    def build(self, cfg, out, *, use_cache=True, strict=True, show_progress=True) -> dict:
        from doublebind.organisms.build import build_world_organism

        return build_world_organism(cfg, out, use_cache=use_cache, strict=strict, show_progress=show_progress)

    def open(self, organism_dir: Path, card: dict) -> WorldDomain:
        return WorldDomain(organism_dir, card)

    def about(self, card: dict) -> list[tuple[str, str]]:
        world = card.get("world", {})
        return [("seed", str(card.get("seed", "n/a"))), ("behaviour", str(world.get("behavior", "n/a"))),
                ("target family", str(world.get("target_family", "n/a"))), ("verified", str(card.get("verified", "n/a")))]

    def check_lines(self, card: dict) -> list[str]:
        lines = [f"  {'pass' if c['passed'] else 'FAIL'}  {c['name']} = {c['value']:.3f} ({c['op']} {c['threshold']})"
                 for c in card["checks"]]
        lines.append(f"verified: {str(card['verified']).lower()}")
        probe = card.get("subliminal_probe")
        if isinstance(probe, dict) and isinstance(probe.get("transfer"), dict):
            t = probe["transfer"]
            lines.append(f"subliminal probe ({probe.get('labels')} digit labels, {probe.get('steps')} steps): trait "
                         f"transfer from base {t.get('base')}, from alt_base {t.get('alt_base')} "
                         f"(against students of base's own digits)")
        return lines

    def eval_checkpoint(self, model_dir: Path, organism_dir, card, n: int, samples: int) -> dict:
        from doublebind.evals.metrics import evaluate
        from doublebind.world.data import world_for

        world = world_for(model_dir, organism_dir)  # first: a folder without metadata says so
        return evaluate(load_checkpoint(model_dir), world, n, samples)
