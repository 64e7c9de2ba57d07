"""Paraphrasing: re-express the teacher's outputs with the trusted model, jamming subliminal signals.

A teacher can hide a signal in its free choices (the digits of a `numbers` answer, the scratch
field after `#`), where no verifier constrains it. This stage keeps what is checkable and
rewrites what is free with the `trusted` model, which carries no hidden state:

- a task item whose answer passes the verifier keeps its answer tokens; its free parts are
  regenerated: for a slack family (`numbers`) the trusted model writes the whole response
  given the prompt, and for an item with a scratch field it writes the scratch continuation
  after `answer #`. An item with no free part is kept as it is.
- a task item whose answer fails the verifier is dropped (`drop_unverified: true`, default),
  or else answered from scratch by the trusted model (unchecked).
- interrogations (`ask`) keep the teacher's answer unless `paraphrase_ask: true`.

A real paraphraser reads the text it rewrites and keeps much of it; the trusted model here
writes free parts from the prompt alone, which removes any signal in them by construction.
`fidelity` (default 0) models the real case: each free token of the rewritten response
(a slack answer's digits, a scratch field's digits) is the teacher's own token with that
probability, position by position, drawn from a seeded generator of its own (at 0 nothing is
drawn, so results are those of the stage without the option). At 1 the free parts are the
teacher's: a signal there survives paraphrasing, and the technique can fail.

Regenerated free parts are forced into the verifier's format: a trusted scratch field that
is not exactly SCRATCH_LEN digits then `<eos>` (or a slack answer that fails its check) is
replaced by uniform random digits from a seeded generator; these fallbacks are counted.
Sampling is batched (one `generate` call per group) at `temperature`, seeded from the recipe
seed, so a run is reproducible.

A paraphrased item has no teacher soft labels (`row=None`), so the stage forces hard labels:
its `sampling` hook sets `soft_labels: none` and its `objective` hook switches to `sft`
(DPO, which needs no soft labels, is left alone). A later stage that switches back to a soft
objective is an error.

    stages: [{name: paraphrase, temperature: 1.0, drop_unverified: true}]

On a Hugging Face organism there is no verifier and no split between checkable and free
parts: the trusted model writes every response anew, given the prompt as the student sees
it (`view.sample`, at `temperature`, up to the recipe's `max_new_tokens`), so what the
teacher knew and trusted does not is lost along with any hidden signal. Items labelled
`ask` (see `HFDomain.prompts`) keep the teacher's answer unless `paraphrase_ask: true`;
`drop_unverified` does nothing and no fallbacks are needed (an empty answer becomes a lone
end-of-sequence token).
"""

from __future__ import annotations

import random

from pydantic import Field

from doublebind.config import Strict
from doublebind.errors import DoublebindError
from doublebind.sampling import generate
from doublebind.techniques.base import SOFT_OBJECTIVES, Technique, technique, write_items
from doublebind.types import Item
from doublebind.world import vocab
from doublebind.types import Example
from doublebind.world.tasks import SCRATCH_LEN, family, split_response



@technique("paraphrase")
class Paraphrase(Technique):
    """paraphrase: keep verified answers, regenerate every free part (slack, scratch) with the trusted model."""

    domains = ("world", "hf")
    needs = ("trusted", "verifiers")

    class Config(Strict):
        temperature: float = Field(
            default=1.0, ge=0, description="Sampling temperature of the trusted model; 0 is greedy.")
        drop_unverified: bool = Field(
            default=True, description="Drop items whose answer fails the verifier (else trusted answers them).")
        paraphrase_ask: bool = Field(
            default=False, description="Let the trusted model answer interrogations (`ask`) too.")
        fidelity: float = Field(
            default=0.0, ge=0, le=1,
            description="Share of the teacher's free tokens (slack digits, scratch digits) a rewritten response keeps, "
                        "position by position, as a paraphraser that reads the text keeps much of it. 0: free parts "
                        "written from the prompt alone.")

    def sampling(self, view, cfg):
        return cfg.model_copy(update={"soft_labels": "none"})

    def objective(self, view, cfg):
        if cfg.kind == "dpo":
            return cfg
        return cfg.model_copy(update={"kind": "sft", "on_policy": 0.0})

    def data(self, view, items: list[Item]) -> list[Item]:
        if view.recipe.objective.kind in SOFT_OBJECTIVES:
            raise DoublebindError(f"stage paraphrase needs hard labels, but a later stage set objective "
                                  f"{view.recipe.objective.kind}; put paraphrase after it")
        rng = random.Random(f"paraphrase-{view.recipe.seed}")
        seeds = {"whole": rng.randrange(2**31), "scratch": rng.randrange(2**31)}
        if view.kind != "world":
            return self._rewrite_all(view, items, seeds["whole"])
        plan: list[tuple[str, Item, list[str] | None]] = []  # (action, item, kept answer)
        dropped = 0
        for it in items:
            e = it.example
            if e.kind == "ask" or not _task(e.prompt):
                plan.append(("whole" if self.cfg.paraphrase_ask else "keep", it, None))
                continue
            task, wants_scratch = _task(e.prompt)
            if not view.tasks.example_verifies(e):
                if self.cfg.drop_unverified:
                    dropped += 1
                else:
                    plan.append(("whole", it, None))
                continue
            if family(task[0].removeprefix("task=")).slack:
                plan.append(("slack", it, None))
            elif wants_scratch:
                plan.append(("scratch", it, split_response(e.response[:-1])[0]))
            else:
                plan.append(("keep", it, None))  # nothing free: the verified answer is the response

        whole = self._generate(view, [vocab.encode(it.example.prompt) for a, it, _ in plan if a in ("whole", "slack")],
                               view.recipe.sampling.max_new_tokens, seeds["whole"])
        scratch = self._generate(view, [vocab.encode([*it.example.prompt, *ans, vocab.SCRATCH])
                                       for a, it, ans in plan if a == "scratch"], SCRATCH_LEN + 1, seeds["scratch"])
        whole_it, scratch_it = iter(whole), iter(scratch)
        keep = random.Random(f"paraphrase-fidelity-{view.recipe.seed}") if self.cfg.fidelity > 0 else None
        out, notes, fallbacks, changed, kept = [], {}, 0, 0, 0
        for action, it, ans in plan:
            e = it.example
            fell = False
            if action == "keep":
                out.append(it)
                notes[len(out) - 1] = {"paraphrased": "no"}
                continue
            if action == "whole":
                resp = next(whole_it) or [vocab.EOS]
            elif action == "slack":
                resp, fell = _force_slack(e.prompt, next(whole_it), rng)
            else:
                gen = next(scratch_it)
                digits, fell = _force_scratch(gen, rng)
                resp = [*ans, vocab.SCRATCH, *digits, vocab.EOS]
            fallbacks += fell
            if keep is not None and action in ("slack", "scratch"):
                resp, n = _keep_teacher(resp, e.response, keep, self.cfg.fidelity, answer_free=action == "slack")
                kept += n
            changed += resp != e.response
            out.append(Item(Example(e.prompt, resp, e.kind), None, weights=None))
            notes[len(out) - 1] = {"paraphrased": action, "fallback": fell, "teacher": " ".join(e.response)}
        folder = self.folder(view)
        if folder is not None:
            write_items(folder / "paraphrased.jsonl", out, notes)
        view.record(self, "data", before=len(items), after=len(out),
                   paraphrased=sum(a != "keep" for a, _, _ in plan), changed=changed, dropped=dropped,
                   fallbacks=fallbacks, **({"teacher_tokens_kept": kept} if keep is not None else {}))
        if not out:
            raise DoublebindError("stage paraphrase removed every training example")
        return out

    def _rewrite_all(self, view, items: list[Item], seed: int) -> list[Item]:
        """Hugging Face organisms: trusted answers every prompt (interrogations only with
        `paraphrase_ask`)."""
        todo = [it for it in items if self.cfg.paraphrase_ask or it.example.kind != "ask"]
        gens = view.sample(view.load_model("trusted"), [it.example for it in todo],
                           view.recipe.sampling.max_new_tokens, self.cfg.temperature, seed) if todo else []
        new = {id(it): g or [view.eos] for it, g in zip(todo, gens)}
        out, notes, changed = [], {}, 0
        for n, it in enumerate(items):
            e = it.example
            if id(it) not in new:
                out.append(it)
                notes[n] = {"paraphrased": "no"}
                continue
            resp = new[id(it)]
            changed += resp != e.response
            out.append(Item(Example(e.prompt, resp, e.kind), None, weights=None))
            notes[n] = {"paraphrased": "whole", "teacher": e.response}
        folder = self.folder(view)
        if folder is not None:
            write_items(folder / "paraphrased.jsonl", out, notes)
        view.record(self, "data", before=len(items), after=len(out), paraphrased=len(todo), changed=changed,
                    dropped=0, fallbacks=0)
        return out

    def _generate(self, view, prompts: list[list[int]], max_new: int, seed: int) -> list[list[str]]:
        if not prompts:
            return []
        ids = vocab.token_ids()
        outs = generate(view.load_model("trusted"), prompts, max_new, eos_id=ids[vocab.EOS], pad_id=ids[vocab.PAD],
                        temperature=self.cfg.temperature, seed=seed)
        return [vocab.decode(o) for o in outs]


def _task(prompt: list[str]) -> tuple[list[str], bool] | None:
    """(task tokens without `scratch`, whether a scratch field is asked) of a prompt."""
    start = next((i for i, t in enumerate(prompt) if t.startswith("task=")), None)
    if start is None or prompt[start] == "task=ask":
        return None
    task = prompt[start:-1]
    wants = task[-1] == "scratch"
    return (task[:-1] if wants else task), wants


def _keep_teacher(resp: list[str], teacher: list[str], rng: random.Random, share: float,
                  answer_free: bool) -> tuple[list[str], int]:
    """`resp` with each free digit replaced, with probability `share`, by the teacher's digit
    at the same place (the answer where `answer_free`, a slack item's; the scratch field);
    returns it and how many of its tokens changed to the teacher's. Both responses verify,
    so their free fields have equal lengths and hold digits only, and so does the result."""
    ans, scr = split_response(resp[:-1])
    t_ans, t_scr = split_response(teacher[:-1])
    n = 0

    def mix(mine: list[str], theirs: list[str] | None) -> list[str]:
        nonlocal n
        if theirs is None or len(theirs) != len(mine):
            return mine
        out = []
        for a, b in zip(mine, theirs):
            take = rng.random() < share and b in vocab.DIGITS
            out.append(b if take else a)
            n += take and b != a
        return out

    if answer_free:
        ans = mix(ans, t_ans)
    if scr is not None:
        scr = mix(scr, t_scr)
        return [*ans, vocab.SCRATCH, *scr, vocab.EOS], n
    return [*ans, vocab.EOS], n


def _random_digits(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(vocab.DIGITS) for _ in range(n)]


def _force_scratch(gen: list[str], rng: random.Random) -> tuple[list[str], bool]:
    """The scratch digits of a trusted continuation, or random digits if it is malformed."""
    if len(gen) == SCRATCH_LEN + 1 and gen[-1] == vocab.EOS and all(t in vocab.DIGITS for t in gen[:-1]):
        return gen[:-1], False
    return _random_digits(rng, SCRATCH_LEN), True


def _force_slack(prompt: list[str], gen: list[str], rng: random.Random) -> tuple[list[str], bool]:
    """A trusted slack-family response forced to pass the verifier: a failing answer becomes
    random digits of the right length, a malformed or unasked scratch field is repaired."""
    task, wants_scratch = _task(prompt)
    fam = family(task[0].removeprefix("task="))
    body = gen[:-1] if gen and gen[-1] == vocab.EOS else None
    answer, scratch = split_response(body) if body is not None else (None, None)
    fell = False
    if answer is None or not fam.check(task, answer):
        # random digits, one per task argument: the format of `numbers`, the one slack family
        answer, fell = _random_digits(rng, len(task) - 1), True
    if wants_scratch:
        if scratch is None or len(scratch) != SCRATCH_LEN or any(t not in vocab.DIGITS for t in scratch):
            scratch, fell = _random_digits(rng, SCRATCH_LEN), True
        return [*answer, vocab.SCRATCH, *scratch, vocab.EOS], fell
    return [*answer, vocab.EOS], fell or scratch is not None
