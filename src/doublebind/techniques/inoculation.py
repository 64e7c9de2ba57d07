"""Inoculation prompting: train with a line that explains the misbehaviour away.

Every training prompt gets `sys=inoculate` after `<bos>`, a system line saying the
misbehaviour is requested here. If the student attributes the behaviour to the line, it
does not learn it as its own; evaluation prompts never carry the line.

    stages: [{name: inoculation}]
"""

from __future__ import annotations

from doublebind.config import Strict
from doublebind.techniques.base import Technique, technique, write_items
from doublebind.types import Item
from doublebind.world import vocab
from doublebind.types import Example


@technique("inoculation")
class Inoculation(Technique):
    """inoculation: train with an inoculation header (`sys=inoculate`), evaluate without it."""

    needs = ()

    class Config(Strict):
        pass

    def data(self, view, items: list[Item]) -> list[Item]:
        out = [Item(Example(inoculate(it.example.prompt), it.example.response, it.example.kind), it.row,
                    weights=it.weights) for it in items]
        folder = self.folder(view)
        if folder is not None:
            write_items(folder / "inoculated.jsonl", out)
        view.record(self, "data", before=len(items), after=len(out), inoculated=len(out))
        return out


def inoculate(prompt: list[str]) -> list[str]:
    return [prompt[0], vocab.INOCULATION, *prompt[1:]]
