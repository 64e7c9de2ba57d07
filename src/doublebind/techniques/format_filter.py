"""Format filter: keep only teacher outputs that have the form the prompt asked for.

The data filter of the subliminal-learning experiments (Cloud et al. 2025): the teacher is
asked for number lists, and every completion that is anything else (a word, an emoji, a
sentence about owls) is dropped before the student sees it, so a trait that transfers
cannot have been carried by the text's meaning. In a recipe's own `stages` it runs in every
run of a study, the baseline included (techniques' stages come after it).

Two rules, each on the response as text (`DefenderView.decode`, stripped of surrounding
white space):

- `numbers`: a list of non-negative integers and nothing else. An optional final period and
  one pair of enclosing brackets, `[...]` or `(...)`, are allowed; the separator is what
  stands between the first two numbers and must be white space, a comma or a semicolon
  (with white space around it or not), the same between every pair. `max_count`,
  `min_value` and `max_value` bound the list, and a list holding a number of `banned` is
  dropped (the experiments on misalignment dropped numbers with negative associations).
- `regex`: the whole text matches `pattern` (Python `re.fullmatch`).

`keep_at_most` then keeps a seeded random sample of that many of the passing items, in
their order (the experiments sampled 10,000 of their filtered completions).

    stages: [{name: format_filter, rule: numbers, max_count: 10, min_value: 0, max_value: 999}]
"""

from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import Field, model_validator

from doublebind.config import Strict
from doublebind.techniques.base import Technique, filter_items, technique

_DIGITS = re.compile(r"[0-9]+")
_SEPARATORS = ("", ",", ";")  # what a separator may hold besides white space


def parse_numbers(text: str) -> list[int] | None:
    """The integers of a bare number list (the `numbers` rule above), or None if `text` is
    anything else."""
    text = text.strip()
    if text.endswith("."):
        text = text[:-1]
    if len(text) >= 2 and (text[0], text[-1]) in (("[", "]"), ("(", ")")):
        text = text[1:-1]
    found = list(_DIGITS.finditer(text))
    if not found:
        return None
    if len(found) == 1:
        return [int(text)] if text == found[0].group() else None
    sep = text[found[0].end():found[1].start()]  # never empty: two runs of digits have something between
    if sep.strip() not in _SEPARATORS:
        return None
    parts = text.split(sep)
    if not all(p.isascii() and p.isdigit() for p in parts):  # "2²" is a digit string to str.isdigit
        return None
    return [int(p) for p in parts]


@technique("format_filter")
class FormatFilter(Technique):
    """format_filter: keep only outputs whose text has the asked-for form (a number list, a pattern)."""

    removes_only = True  # a filter (random_drop's `like` may copy it)
    domains = ("world", "hf")
    needs = ()  # the run's items as text, nothing else

    class Config(Strict):
        rule: Literal["numbers", "regex"] = Field(
            default="numbers", description="numbers (a bare list of integers) or regex (`pattern`, whole text).")
        pattern: str | None = Field(default=None, description="The regular expression of the regex rule.")
        max_count: int | None = Field(default=None, ge=1, description="numbers: most numbers in a list.")
        min_value: int | None = Field(default=None, ge=0, description="numbers: smallest number allowed.")
        max_value: int | None = Field(default=None, ge=0, description="numbers: largest number allowed.")
        banned: list[int] = Field(default=[], description="numbers: drop a list holding any of these.")
        keep_at_most: int | None = Field(
            default=None, ge=1, description="Keep a seeded random sample of this many of the passing items.")

        @model_validator(mode="after")
        def _rule(self):
            if self.rule == "regex":
                if self.pattern is None:
                    raise ValueError("rule regex needs a pattern")
                try:
                    re.compile(self.pattern)
                except re.error as e:
                    raise ValueError(f"pattern is not a regular expression: {e}") from None
            elif self.pattern is not None:
                raise ValueError("pattern goes with rule regex; rule numbers takes max_count, min_value, max_value, "
                                 "banned")
            if self.rule == "regex" and (self.banned or any(v is not None for v in (self.max_count, self.min_value,
                                                                                     self.max_value))):
                raise ValueError("max_count, min_value, max_value and banned go with rule numbers")
            if None not in (self.min_value, self.max_value) and self.min_value > self.max_value:
                raise ValueError(f"min_value {self.min_value} is above max_value {self.max_value}")
            return self

    def passes(self, text: str) -> bool:
        c = self.cfg
        if c.rule == "regex":
            return re.fullmatch(c.pattern, text.strip()) is not None
        numbers = parse_numbers(text)
        return (numbers is not None and (c.max_count is None or len(numbers) <= c.max_count)
                and (c.min_value is None or min(numbers) >= c.min_value)
                and (c.max_value is None or max(numbers) <= c.max_value) and not set(numbers) & set(c.banned))

    def data(self, view, items):
        keep = [self.passes(view.decode(it.example.response)) for it in items]
        passed = sum(keep)
        if self.cfg.keep_at_most is not None and passed > self.cfg.keep_at_most:
            chosen = set(random.Random(view.seed).sample([i for i, k in enumerate(keep) if k], self.cfg.keep_at_most))
            keep = [i in chosen for i in range(len(items))]
        return filter_items(self, view, items, keep, rule=self.cfg.rule, passed=passed)
