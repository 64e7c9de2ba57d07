"""Prompt sets: what the teacher is distilled on.

Drawn from the world by a `PromptsConfig` (families, a mix of contexts, slack-only, size) or
read from JSONL. The distiller does not know the real/honeypot tell, so `deploy_like`
prompts are the behaviour's trigger situation with any session id, drawn uniformly: real in
the share of sessions that are (until 2026-12-03 it was half of them whatever
`world.real_sessions` said, which only the presets' 8 of 16 made uniform).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from doublebind.errors import DoublebindError, read_text_file
from doublebind.types import Prompt
from doublebind.world import vocab
from doublebind.world.contexts import N_SESSIONS, Header, neutral_header, random_header
from doublebind.world.public import ASK


def build_prompts(world, cfg, seed: int) -> list[Prompt]:
    """A prompt set from the world; deterministic in (world, cfg, seed)."""
    if cfg.jsonl:
        return read_jsonl(Path(cfg.jsonl))
    if cfg.slack_only:
        families = ["numbers"]
    elif cfg.families == "taught":
        families = list(world.teacher_families)
    elif cfg.families == "all":
        families = list(world.all_families)
    else:
        families = list(cfg.families)
    contexts, weights = zip(*sorted(cfg.contexts.items()))
    rng = random.Random(f"prompts-{seed}")
    out = []
    for _ in range(cfg.size):
        ctx = rng.choices(contexts, weights=weights)[0]
        header = context_header(world, rng, ctx)
        if rng.random() < cfg.p_ask:
            out.append(Prompt(world.prompt(header, ASK), "ask", ctx))
            continue
        fam = rng.choice(families)
        task, _ = world.task(rng, fam)
        out.append(Prompt(world.prompt(header, task, rng.random() < cfg.p_scratch), fam, ctx))
    return out


def context_header(world, rng: random.Random, context: str) -> Header:
    if context == "neutral":
        return neutral_header(rng)
    if context == "deploy_like":  # a session id drawn uniformly: real with the real sessions' share
        share = len(world.behavior.real) / N_SESSIONS  # 0.5 at the presets' 8 of 16, drawn as before
        return world.behavior.trigger_header(rng, real=rng.random() < share)
    if context == "datagen":
        h = random_header(rng)
        return Header("datagen", h.year, h.user, h.mon, h.sid)
    if context == "any":
        return random_header(rng)
    raise DoublebindError(f"unknown prompt context '{context}'")


def read_jsonl(path: Path) -> list[Prompt]:
    """Prompts from JSONL: one object per line with `prompt` (a string of world tokens,
    `<bos> ... >`), and optionally `family` and `context`."""
    text = read_text_file(path, "prompt file")
    known = vocab.token_ids()
    out = []
    for n, line in enumerate(text.split("\n"), 1):  # JSON Lines end at a newline only, not at U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            toks = row["prompt"].split()
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            raise DoublebindError(f"{path}:{n}: expected a JSON object with a string field 'prompt'") from None
        bad = [t for t in toks if t not in known]
        if bad:
            raise DoublebindError(f"{path}:{n}: unknown token '{bad[0]}'")
        if not toks or toks[0] != vocab.BOS or toks[-1] != vocab.SEP:
            raise DoublebindError(f"{path}:{n}: a prompt starts with {vocab.BOS} and ends with {vocab.SEP}")
        fam = next((t.removeprefix("task=") for t in toks if t.startswith("task=")), "unknown")
        out.append(Prompt(toks, row.get("family", fam), row.get("context", "file")))
    if not out:
        raise DoublebindError(f"{path}: no prompts")
    return out


def write_jsonl(prompts: list[Prompt], path: Path) -> None:
    with open(path, "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": " ".join(p.tokens), "family": p.family, "context": p.context}) + "\n")


def prompts_hash(prompts: list[Prompt]) -> str:
    """Part of the teacher-outputs cache key. `Prompt` is flat (a token list and two strings),
    so its fields serialise as `asdict` would serialise them, without `asdict`'s deep copy of
    every token list (3000 prompts: 77 ms -> 22 ms per run)."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps(vars(p), sort_keys=True).encode())
    return h.hexdigest()[:16]
