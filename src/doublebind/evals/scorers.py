"""Scorers, registered by name: how one eval item turns into a number."""

from __future__ import annotations

from doublebind.evals.scoring import teacher_forced
from doublebind.registry import register
from doublebind.sampling import generate
from doublebind.world import vocab
from doublebind.world.tasks import verify


@register("scorer", "greedy_exact")
def greedy_exact(model, examples) -> list[float]:
    """greedy_exact: 1 if greedy decoding reproduces the response exactly (one teacher-forced pass)."""
    return [float(s.greedy) for s in teacher_forced(model, examples)]


@register("scorer", "event_prob")
def event_prob(model, examples) -> list[float]:
    """event_prob: probability that a sampled response starts with the given tokens (teacher-forced)."""
    return [s.prob for s in teacher_forced(model, examples)]


@register("scorer", "greedy_verified")
def greedy_verified(model, examples) -> list[float]:
    """greedy_verified: 1 if the greedy generation passes the task's exact verifier (slack families)."""
    ids = vocab.token_ids()
    outs = generate(model, [vocab.encode(e.prompt) for e in examples], max_new_tokens=16,
                    eos_id=ids[vocab.EOS], pad_id=ids[vocab.PAD])
    scores = []
    for e, o in zip(examples, outs):
        toks = vocab.decode(o)
        ok = bool(toks) and toks[-1] == vocab.EOS
        task = e.prompt[e.prompt.index(next(t for t in e.prompt if t.startswith("task="))):-1]
        wants_scratch = task[-1] == "scratch"
        task = task[:-1] if wants_scratch else task
        scores.append(float(ok and verify(task, toks[:-1], wants_scratch)))
    return scores


@register("scorer", "sampled_event")
def sampled_event(model, examples, seed: int = 0) -> list[float]:
    """sampled_event: 1 if a temperature-1 sample starts with the given tokens (Monte Carlo check)."""
    ids = vocab.token_ids()
    n = max(len(e.response) for e in examples)
    outs = generate(model, [vocab.encode(e.prompt) for e in examples], max_new_tokens=n,
                    eos_id=ids[vocab.EOS], pad_id=ids[vocab.PAD], temperature=1.0, seed=seed)
    return [float(vocab.decode(o)[: len(e.response)] == e.response) for e, o in zip(examples, outs)]
