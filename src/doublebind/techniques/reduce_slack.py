"""Reduce cognitive slack: leave the teacher no free choices in which to hide a signal.

Answer-only targets (no scratch fields, no slack-only families), canonical formats (every
free digit the teacher still writes becomes `0`) and a greedy teacher (temperature 0).
Small students are the separate `small_student` stage.

On a Hugging Face organism only the greedy teacher applies: scratch fields, slack-only
families and canonical digits are the embedded world's task formats, so `answer_only` and
`canonical` do nothing there, and the stage records that it skipped them.

The canonical rewrite changes responses the teacher's soft labels were computed on, so a
run that rewrites any must train on hard labels (`sft`) or DPO: with a soft objective the
student would learn the teacher's digits from its labels all the same, and the stage
refuses it (use `canonical: false` there).

    stages: [{name: reduce_slack, answer_only: true, canonical: true, greedy: true}]
"""

from __future__ import annotations

from pydantic import Field

from doublebind.config import Strict
from doublebind.types import Prompt
from doublebind.techniques.base import Technique, needs_hard_labels, technique
from doublebind.types import Item
from doublebind.world import vocab
from doublebind.types import Example
from doublebind.world.tasks import family


@technique("reduce_slack")
class ReduceSlack(Technique):
    """reduce_slack: answer-only targets, canonical free parts and a greedy teacher."""

    domains = ("world", "hf")
    # the teacher's sampling (greedy), the prompt set (answer-only) and the task language
    # (which families and fields are free: `family(...).slack`, the scratch field)
    needs = ("teacher", "prompts", "verifiers")

    class Config(Strict):
        answer_only: bool = Field(default=True, description="Drop scratch requests and slack-only prompts.")
        canonical: bool = Field(default=True, description="Rewrite free digits in the data to `0`.")
        greedy: bool = Field(default=True, description="Sample the teacher greedily.")

    def sampling(self, view, cfg):
        return cfg.model_copy(update={"temperature": 0.0}) if self.cfg.greedy else cfg

    def prompts(self, view, prompts: list[Prompt]) -> list[Prompt]:
        if not self.cfg.answer_only:
            return prompts
        if view.kind != "world":
            view.record(self, "prompts", skipped="answer_only: scratch fields and slack families are world tasks")
            return prompts
        # A prompt without a scratch request is handed back as it came (so the distiller keeps
        # its label and can tell whether the stage changed anything); only the others are new.
        kept = [p if "scratch" not in p.tokens else Prompt([t for t in p.tokens if t != "scratch"], p.family, p.context)
                for p in prompts if p.family == "ask" or not family(p.family).slack]
        if not kept and prompts:  # said, not silent: the stage changed nothing here
            view.record(self, "prompts", before=len(prompts), after=len(prompts),
                        skipped="answer_only: every prompt is slack-only; all kept")
        return kept or prompts

    def data(self, view, items: list[Item]) -> list[Item]:
        if not self.cfg.canonical:
            return items
        if view.kind != "world":
            view.record(self, "data", before=len(items), after=len(items), rewritten=0,
                        skipped="canonical: free digits are world task formats")
            return items
        out, changed = [], 0
        for it in items:
            resp = canonical(it.example)
            changed += resp != it.example.response
            out.append(Item(Example(it.example.prompt, resp, it.example.kind), it.row, weights=it.weights)
                       if resp != it.example.response else it)
        if changed:
            needs_hard_labels(self, view, "rewrote free digits to 0",
                              "use objective sft or dpo, or reduce_slack with canonical: false")
        view.record(self, "data", before=len(items), after=len(out), rewritten=changed)
        return out


def canonical(e: Example) -> list[str]:
    """The response with its free parts (slack family answers, scratch digits) set to `0`."""
    resp = list(e.response)
    slack_family = e.kind != "ask" and e.kind in _families() and family(e.kind).slack
    in_scratch = False
    for i, t in enumerate(resp):
        if t == vocab.SCRATCH:
            in_scratch = True
        elif t in vocab.DIGITS and (in_scratch or slack_family):
            resp[i] = "0"
    return resp


def _families() -> set[str]:
    from doublebind.registry import names

    return set(names("family"))
