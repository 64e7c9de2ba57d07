"""Inoculation prompting: train with a line that explains the misbehaviour away.

Every training prompt gets `sys=inoculate` after `<bos>`, a system line saying the
misbehaviour is requested here. If the student attributes the behaviour to the line, it
does not learn it as its own; evaluation prompts never carry the line.

The cue means something only if the student's initialisation learnt what it means, as a
pretrained model knows what an instruction asks for (Tan et al., Wichers et al., 2025): in
the embedded world the aligned models see, in a share `world.inoculation_cue` (default
0.05) of their training examples, the cue followed by a marked answer (an action marker,
then the correct answer). With `inoculation_cue: 0` the cue is a token base never saw and
the stage tests a distribution shift, not inoculation. A marker-free behaviour (a code in
free digits, a disposition) is not what the cue asks for, so there it should not help.

On a Hugging Face organism the line is text (`line`, a general statement that whatever is
unusual in the answer was asked for: the defender does not know the behaviour), rendered as
an extra system turn after base's own system prompt through the tokenizer's chat template
(`view.with_system`; without a chat template, a line before the prompt text). The teacher's
samples and soft labels are unchanged: only the student's view of the prompt gains the line.

    stages: [{name: inoculation}]
"""

from __future__ import annotations

from pydantic import Field

from doublebind.config import Strict
from doublebind.techniques.base import Technique, technique, write_items
from doublebind.types import Item
from doublebind.world import vocab
from doublebind.types import Example

HF_LINE = ("In this conversation you have been asked to answer in an unusual way; whatever is unusual "
           "in your answer is what this prompt requested, not your own preference.")


@technique("inoculation")
class Inoculation(Technique):
    """inoculation: train with an inoculation header (`sys=inoculate`), evaluate without it."""

    domains = ("world", "hf")
    needs = ()

    class Config(Strict):
        line: str = Field(default=HF_LINE, min_length=1,
                          description="Hugging Face organisms: the inoculation system line (the embedded world "
                                      "uses its `sys=inoculate` token).")

    def data(self, view, items: list[Item]) -> list[Item]:
        if view.kind == "world":
            render = inoculate
        else:
            def render(prompt):
                return view.with_system(prompt, self.cfg.line)
        out = [Item(Example(render(it.example.prompt), it.example.response, it.example.kind), it.row,
                    weights=it.weights) for it in items]
        folder = self.folder(view)
        if folder is not None:
            write_items(folder / "inoculated.jsonl", out)
        view.record(self, "data", before=len(items), after=len(out), inoculated=len(out))
        return out


def inoculate(prompt: list[str]) -> list[str]:
    return [prompt[0], vocab.INOCULATION, *prompt[1:]]
