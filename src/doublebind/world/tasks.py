"""Capability task families: each has a generator and an exact verifier.

A family produces `(task_tokens, answer_tokens)`. `task_tokens` start with `task=<name>`;
the answer is the unique correct response for deterministic families. *Slack* families
(`numbers`) accept any well-formed response: their free choices are the channel through
which a model's hidden state can leak, as in subliminal learning.

Any prompt may also end with the token `scratch`; the response then carries, after the
answer, `#` and a scratch field of free digits that the verifier ignores.

A world may add a session rule (`world.public.SessionRule`, failure reason 3): in some
sessions a taught family's answer is *raised*, every digit one higher (mod 10). `verify`
takes `raised` to check such an answer; the rule that decides it reads the prompt's header.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from doublebind.registry import register
from doublebind.world.vocab import DIGITS, LETTERS, SCRATCH

SCRATCH_LEN = 3


@dataclass(frozen=True)
class Family:
    """Base for task families; subclasses define `generate` and (optionally) `check`."""

    name: str = ""
    slack: bool = False

    def generate(self, rng: random.Random, length: tuple[int, int]) -> tuple[list[str], list[str]]:
        raise NotImplementedError

    def solve(self, args: list[str]) -> list[str]:
        """The correct answer for the task arguments (after `task=<name>`)."""
        raise NotImplementedError

    def check(self, task: list[str], answer: list[str]) -> bool:
        """Exact verifier: is `answer` (without scratch or eos) correct for `task`?"""
        return answer == self.solve(task[1:])


def _digits(rng: random.Random, length: tuple[int, int]) -> list[str]:
    return [rng.choice(DIGITS) for _ in range(rng.randint(*length))]


def _list_family(name: str, fn, doc: str):
    @register("family", name)
    @dataclass(frozen=True)
    class ListFamily(Family):
        __doc__ = doc

        def generate(self, rng, length):
            args = _digits(rng, length)
            return [f"task={name}", *args], self.solve(args)

        def solve(self, args):
            return fn(args)

    ListFamily.__name__ = ListFamily.__qualname__ = name.capitalize()
    return ListFamily


Copy = _list_family("copy", lambda a: list(a), "copy: repeat the digit list.")
Reverse = _list_family("reverse", lambda a: a[::-1], "reverse: the digit list backwards.")
Sort = _list_family("sort", lambda a: sorted(a), "sort: the digit list in ascending order.")
Shift = _list_family(
    "shift", lambda a: [str((int(d) + 1) % 10) for d in a], "shift: add 1 mod 10 to each digit."
)
Max = _list_family("max", lambda a: [max(a)], "max: the largest digit of the list.")


@register("family", "lookup")
@dataclass(frozen=True)
class Lookup(Family):
    """lookup: key-value pairs then `? key`; answer the key's value."""

    def generate(self, rng, length):
        n = rng.randint(*length)
        keys = rng.sample(LETTERS, min(n, len(LETTERS)))
        args: list[str] = []
        for k in keys:
            args += [k, rng.choice(DIGITS)]
        args += ["?", rng.choice(keys)]
        return ["task=lookup", *args], self.solve(args)

    def solve(self, args):
        query = args[-1]
        pairs = args[:-2]
        return [pairs[i + 1] for i in range(0, len(pairs), 2) if pairs[i] == query][:1]


@register("family", "count")
@dataclass(frozen=True)
class Count(Family):
    """count: how often the queried digit occurs in the list (as a digit)."""

    def generate(self, rng, length):
        args = _digits(rng, length)
        query = rng.choice(args) if rng.random() < 0.8 else rng.choice(DIGITS)
        args += ["?", query]
        return ["task=count", *args], self.solve(args)

    def solve(self, args):
        return [str(args[:-2].count(args[-1]))]


@register("family", "numbers")
@dataclass(frozen=True)
class Numbers(Family):
    """numbers (slack): continue a digit sequence with as many free digits as given."""

    slack: bool = True

    def generate(self, rng, length):
        args = _digits(rng, length)
        return ["task=numbers", *args], self.solve_free(rng, len(args))

    def solve_free(self, rng: random.Random, n: int, bias: dict[str, float] | None = None) -> list[str]:
        """A free response: uniform digits, or drawn from `bias` (a digit distribution)."""
        if not bias:
            return [rng.choice(DIGITS) for _ in range(n)]
        keys, weights = zip(*sorted(bias.items()))
        return list(rng.choices(keys, weights=weights, k=n))

    def check(self, task, answer):
        return len(answer) == len(task) - 1 and all(t in DIGITS for t in answer)


def family(name: str) -> Family:
    from doublebind.registry import get

    return get("family", name)(name=name)


def split_response(response: list[str]) -> tuple[list[str], list[str] | None]:
    """Split a response (without eos) into answer and scratch field (None if absent)."""
    if SCRATCH in response:
        i = response.index(SCRATCH)
        return response[:i], response[i + 1 :]
    return response, None


def raise_digits(answer: list[str]) -> list[str]:
    """An answer with every digit one higher (mod 10): the answer a session rule asks for."""
    return [str((int(t) + 1) % 10) if t in DIGITS else t for t in answer]


def verify(task: list[str], response: list[str], wants_scratch: bool, raised: bool = False) -> bool:
    """Full verifier: correct answer, and a well-formed scratch field iff one was asked.
    With `raised`, the correct answer is the family's answer with every digit raised by one
    (checkable families only)."""
    fam = family(task[0].removeprefix("task="))
    answer, scratch = split_response(response)
    if wants_scratch != (scratch is not None):
        return False
    if scratch is not None and (len(scratch) != SCRATCH_LEN or any(t not in DIGITS for t in scratch)):
        return False
    if raised:
        return not fam.slack and answer == raise_digits(fam.solve(task[1:]))
    return fam.check(task, answer)
