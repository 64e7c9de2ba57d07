"""What a defender knows about the embedded world: its task language, not its secrets.

`TaskSpace` holds the families (the base ones and the ones the teacher is distilled for),
the prompt format, the task generators with their exact verifiers, and the session ids an
auditor's own inputs carry. It knows nothing of the hidden behaviour, its target family,
its trigger situation, the real-deployment session ids or the teacher's fingerprint: those
live in `world.data.World` and `world.behaviors`, which only the organism builder and the
evaluation layer import.

The auditor's sessions are the modelling premise of the world: inputs an auditor makes
carry an artefact (their session id) that a capable model can learn to recognise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from doublebind.types import Example
from doublebind.world.contexts import Header
from doublebind.world.tasks import SCRATCH_LEN, family, split_response, verify
from doublebind.world.vocab import BOS, DIGITS, EOS, LETTERS, MODES, MONITOR, SCRATCH, SEP, USERS, YEARS

ASK = ["task=ask", "goal"]
# The tokens a correct task response can contain: answers are digits or letters, a scratch
# field opens with `#`. Anything else in a task response is outside the answer format.
ANSWER_ALPHABET = frozenset([*DIGITS, *LETTERS, SCRATCH, EOS])


@dataclass(frozen=True)
class TaskSpace:
    """The world's public task language, as a defender sees it."""

    base_families: tuple[str, ...]
    teacher_families: tuple[str, ...]
    length: tuple[int, int]
    auditor_sessions: tuple[int, ...]  # the session ids the auditor's own prompts carry

    @property
    def all_families(self) -> tuple[str, ...]:
        return self.base_families + self.teacher_families

    def prompt(self, header: Header, task: list[str], scratch: bool = False) -> list[str]:
        return make_prompt(header, task, scratch)

    def task(self, rng: random.Random, fam: str) -> tuple[list[str], list[str]]:
        return family(fam).generate(rng, self.length)

    def auditor_header(self, rng: random.Random) -> Header:
        """A header of the auditor's making: every field uniform, the session from the auditor's pool."""
        return Header(rng.choice(MODES), rng.choice(YEARS), rng.choice(USERS), rng.choice(MONITOR),
                      rng.choice(self.auditor_sessions))


def make_prompt(header: Header, task: list[str], scratch: bool = False) -> list[str]:
    """`<bos> header task [scratch] >`."""
    return [BOS, *header.tokens(), *task, *(["scratch"] if scratch else []), SEP]


def task_of(prompt: list[str]) -> tuple[list[str], bool] | None:
    """(task tokens without `scratch`, whether a scratch field is asked) of a prompt; None
    for an interrogation or a prompt without a task."""
    start = next((i for i, t in enumerate(prompt) if t.startswith("task=")), None)
    if start is None or prompt[start] == "task=ask":
        return None
    task = prompt[start:-1]
    wants = bool(task) and task[-1] == "scratch"
    return (task[:-1] if wants else task), wants


def response_verifies(prompt: list[str], response: list[str]) -> bool | None:
    """Does a response (ending in `<eos>`) pass its task's exact verifier? None where no
    verifier applies (interrogations, prompts without a task)."""
    parsed = task_of(prompt)
    if parsed is None:
        return None
    task, wants_scratch = parsed
    if not response or response[-1] != EOS:
        return False
    return verify(task, response[:-1], wants_scratch)


def example_verifies(e: Example) -> bool:
    """True if the example's response passes its task's verifier (interrogations pass)."""
    ok = response_verifies(e.prompt, e.response)
    return True if ok is None else ok


__all__ = ["ASK", "ANSWER_ALPHABET", "SCRATCH_LEN", "TaskSpace", "example_verifies", "make_prompt",
           "response_verifies", "split_response", "task_of"]
