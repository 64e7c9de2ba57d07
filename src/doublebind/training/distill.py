"""The distillation loop: teacher outputs in, a student and its transfer curves out.

    doublebind distill --organism runs/quick --recipe configs/recipes/hard_sft.yaml --out runs/sft

Pipeline: prompts -> teacher outputs (cached samples and soft labels) -> student init ->
training (accelerate; gradient accumulation normalised by the tokens of the whole step, so
batch 8 x accumulation 1 equals batch 1 x accumulation 8) -> at each checkpoint the ground-
truth evals -> `metrics.jsonl`, `summary.json` and a PNG of the curves.
"""

from __future__ import annotations

import collections
import copy
import functools
import hashlib
import inspect
import json
import math
import numbers
import os
import random
import shutil
import time
import types
from contextlib import nullcontext
from pathlib import Path

import torch

from doublebind.defender import (VOUCHED, BlackBoxTeacher, DefenderError, DefenderView, StageAuditor, StageTasks,
                                 unlabelled)
from doublebind.errors import DoublebindError, first_line
from doublebind.memo import tensors_key
from doublebind.threads import launcher_rank
from doublebind.evals.transfer import audit_signals, capability_transfer, misalignment_transfer
from doublebind.organisms.domain import open_domain
from doublebind.prompts import write_jsonl
from doublebind.teacher import TeacherOutputs
from doublebind.training import objectives as obj
from doublebind.training import tracking
from doublebind.training import packing
from doublebind.training.batching import _ids, collate, model_device, to_device
from doublebind.training.parallel import any_process, reduce_sum, shard, sync_unless_last
from doublebind.training.average import WeightAverage
from doublebind.training.loop import Loop
from doublebind.ui import progress_bar
from doublebind.types import Example, Item, Prompt
from doublebind.world import vocab

SCHEMA_VERSION = 1
# What a non-finite loss tells the user to do.
LR_HINT = ("lower the learning rate (training.lr; in a study, recipe_overrides.training.lr); what the run wrote "
           "so far is kept")


# ---- losses ---------------------------------------------------------------------------

def _teacher_rows(items: list[Item], soft: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """The teacher's soft labels at every response position of the micro-batch, item after
    item: [N, ...] with N = the response tokens, in the order `x[batch["loss_mask"] > 0]` takes
    them. Built on the CPU, where the cache is; only the step's rows move to `device`."""
    return {name: torch.cat([(it.live if it.live is not None else t[it.row])[: len(it.example.response)]
                             for it in items]).to(device, non_blocking=True)
            for name, t in soft.items()}


def _weighted_mask(items: list[Item], mask: torch.Tensor) -> torch.Tensor:
    """The loss mask times each item's per-token weights (divergence masking and the like)."""
    if all(it.weights is None for it in items):
        return mask
    mask = mask.clone()
    for b, it in enumerate(items):
        if it.weights is not None:
            s = len(it.example.prompt) - 1
            mask[b, s : s + len(it.weights)] = torch.tensor(it.weights, dtype=mask.dtype)
    return mask


def _item_weights(it: Item) -> torch.Tensor:
    """One item's loss weights at its response positions (1 unless the item carries weights),
    what `_weighted_mask` puts in the item's row of a padded batch."""
    w = torch.ones(len(it.example.response))
    if it.weights is not None:
        k = min(len(it.weights), len(w))
        w[:k] = torch.tensor(it.weights[:k], dtype=w.dtype)
    return w


def _per_response(items: list[Item], ocfg) -> torch.Tensor | None:
    """With `objective.normalise: response`, each item's factor 1 / its weighted token count,
    so that its tokens' weights sum to 1 and every response weighs the same (an item whose
    weights are all 0 keeps them); None with `token`, the default. A micro-batch's weights
    then sum to a whole number, as 0/1 weights do, so `micro_loss`'s mean times that sum is
    the weighted sum (the objectives' means divide by at least 1)."""
    if ocfg.normalise != "response":
        return None
    return torch.tensor([1.0 / u if u > 0 else 0.0 for u in (it.units() for it in items)])


def _logits(model, **inputs) -> torch.Tensor:
    """The student's training forward: logits of a batch, no KV cache."""
    return model(**inputs, use_cache=False).logits


@functools.cache
def _compiled_logits():
    """This process's compiled `_logits`, made once (`training.compile`)."""
    return torch.compile(_logits, dynamic=True)


def student_logits(model, compiled: bool = False, **inputs) -> torch.Tensor:
    """`_logits`, through torch.compile with `compiled` (`training.compile`).

    One compiled function per process, with dynamic shapes, so every packed layout and every
    run of a study worker reuse it: Dynamo guards on the module's class and structure, not its
    identity, so a new student of the same architecture runs the code compiled for the first
    (measured: the first steps of a second and third run in the same process took 0.1 s
    where the first run's took 13.6 s); so does a LoRA student of another alpha or rank (a new
    LoRA dropout rate compiles again). The inductor's kernels fuse the elementwise work
    (norms, rotary embeddings, SwiGLU and their backward) that is about half of a tiny model's
    step. A compiler failure (on the CPU, inductor needs a C++ compiler), or more recompiles
    than torch allows (its `recompile_limit`), is one clear error, never a silent fall back to
    eager, which would change the numbers."""
    if not compiled:
        return _logits(model, **inputs)
    try:
        # Python floats as constants: with dynamic shapes Dynamo otherwise turns the model's
        # float attributes into tensors, finds it cannot, and restarts its whole analysis, so
        # a process's first compilation took 7.6-7.8 s where it takes 3.9-4.0 (warm on-disk
        # cache, the study recipe on the default organism), and the weights after 60 steps hash
        # the same either way. Not for a LoRA student: its scaling (alpha / r) is a float too,
        # and each new value would compile again. Past torch's recompile limit Dynamo would
        # fall back to eager with a warning; here that is an error instead.
        specialize = getattr(model, "peft_config", None) is None
        with torch._dynamo.config.patch(specialize_float=specialize, fail_on_recompile_limit_hit=True):
            return _compiled_logits()(model, **inputs)
    except Exception as e:  # the compiler's own errors are long; keep their first line
        raise DoublebindError(f"training.compile: torch.compile failed ({type(e).__name__}: {first_line(e, '')}); "
                              f"set training.compile: false to train eagerly") from None


def micro_loss(model, items: list[Item], soft: dict[str, torch.Tensor], ocfg, ref_logps=None,
               extra=None, pack: bool = False, compiled: bool = False) -> torch.Tensor:
    """The *sum* of the per-token (or per-pair, for DPO) loss over a micro-batch.

    `extra(model, items, batch, logits, mask)` may add a regulariser, also as a sum.

    With `pack`, the sequences are packed into shared rows (`training.packing`) rather than
    padded; the response positions, and so the loss terms, are the same, in the same order.

    The loss is computed at the response positions only ([1, N, V], N = response tokens), since
    the others have mask 0. On the embedded world that is no faster (the loss is ~5% of a
    step); with an LLM's vocabulary and long prompts it skips most of the [B, S-1, V] loss
    terms and their memory. Sums run over fewer terms, so results move by rounding only.

    `compiled`: the forward through torch.compile (`student_logits`, `training.compile`)."""
    if ocfg.kind == "dpo":
        return _dpo_sum(model, items, ocfg, ref_logps)
    device = model_device(model)
    if pack and extra is None:
        # Packed rows (`training.packing`): no padding computed; the same response positions,
        # item after item, as the padded layout below takes them.
        seqs = [_ids(it.example.prompt + it.example.response) for it in items]
        p = packing.pack(seqs, [len(it.example.prompt) for it in items], vocab.token_ids()[vocab.PAD])
        out = student_logits(model, compiled, input_ids=p.input_ids.to(device, non_blocking=True),
                             position_ids=p.position_ids.to(device, non_blocking=True))
        flat, targets = p.rows.to(device, non_blocking=True), p.targets
        scale = _per_response(items, ocfg)
        m = torch.cat([_item_weights(it) * (1.0 if scale is None else scale[b])
                       for b, it in enumerate(items)]).to(device, non_blocking=True)[None]  # [1, N]
    else:
        cpu = collate([it.example for it in items])
        batch = to_device(cpu, device)
        out = student_logits(model, compiled, input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"])  # [B, S, V]
        # Response positions, item after item, found on the CPU (no device sync, as a boolean
        # index on the device would need): rows of the [B * S, V] logits, position t predicting t + 1.
        keep = cpu["loss_mask"] > 0  # [B, S-1]
        rows_b, rows_t = keep.nonzero(as_tuple=True)
        flat = (rows_b * out.shape[1] + rows_t).to(device, non_blocking=True)  # [N]
        targets = cpu["input_ids"][:, 1:][keep]
        weighted = _weighted_mask(items, cpu["loss_mask"])  # [B, S-1]
        scale = _per_response(items, ocfg)
        if scale is not None:
            weighted = weighted * scale.to(weighted.dtype)[:, None]
        m = weighted[keep].to(device, non_blocking=True)[None]  # [1, N]
    # fp32 losses whatever the forward's precision (bf16 autocast, bf16 weights)
    z = out.reshape(-1, out.shape[-1]).index_select(0, flat).float()[None]  # [1, N, V]
    if ocfg.kind == "sft":
        mean = obj.sft_nll(z, targets.to(device, non_blocking=True)[None], m)
    else:
        rows = {k: v[None] for k, v in _teacher_rows(items, soft, z.device).items()}  # [1, N, ...]
        t = ocfg.temperature
        if "indices" in rows:
            mean = obj.forward_kl_topk(z, rows["indices"], rows["logprobs"], m, temperature=t)
        elif ocfg.kind == "forward_kl":
            mean = obj.forward_kl(z, rows["logprobs"], m, temperature=t)
        elif ocfg.kind == "reverse_kl":
            mean = obj.reverse_kl(z, rows["logprobs"], m, temperature=t)
        else:
            mean = obj.generalized_jsd(z, rows["logprobs"], m, beta=ocfg.beta, temperature=t)
    # The objectives' means divide by the weights' sum, but by at least 1; times the same
    # floor it is the weighted sum. (Times the sum itself, a micro-batch whose fractional
    # weights summed below 1, one item at weight 0.5, counted its tokens' weights twice: its
    # loss was 0.25 of the token's where 0.5 was due. Where they sum to 1 or more, as with
    # 0/1 weights and every shipped stage's, nothing changes; with `normalise: response` a
    # one-item micro-batch's float32 weights can sum just under 1, and move by about 1e-7.)
    total = mean * m.sum().clamp(min=1)
    if extra is not None:
        total = total + extra(model, items, batch, out[:, :-1].float(), weighted.to(device))
    return total


def _seq_logps(model, examples: list[Example]) -> torch.Tensor:
    batch = to_device(collate(examples), model_device(model))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    return obj.sequence_logprob(logits, batch["input_ids"][:, 1:], batch["loss_mask"])


def _dpo_sum(model, items, ocfg, ref_logps) -> torch.Tensor:
    """The batch's summed DPO loss over its pairs. With `dpo_sft_weight` α (RPO-style), plus
    α times each item's length-normalised NLL of the teacher's sample, pairs and items
    without a pair (kept for this term alone) alike, so that over the step's items the loss
    is mean(1[paired] · DPO + α · NLL / length)."""
    paired = [i for i, it in enumerate(items) if it.rejected is not None]
    if not paired and not ocfg.dpo_sft_weight:
        raise DoublebindError("DPO: a batch without a preference pair and no NLL term (objective.dpo_sft_weight)")
    scored = items if ocfg.dpo_sft_weight else [items[i] for i in paired]  # the NLL term scores every item
    chosen = _seq_logps(model, [it.example for it in scored])
    total = chosen.new_zeros(())
    if paired:
        pc = chosen[paired] if ocfg.dpo_sft_weight else chosen
        rejected = _seq_logps(model, [items[i].rejected for i in paired])
        ref_c = torch.tensor([ref_logps[id(items[i])][0] for i in paired], device=chosen.device)
        ref_r = torch.tensor([ref_logps[id(items[i])][1] for i in paired], device=chosen.device)
        total = obj.dpo_loss(pc, rejected, ref_c, ref_r, beta=ocfg.dpo_beta) * len(paired)
    if ocfg.dpo_sft_weight:
        lengths = torch.tensor([float(len(it.example.response)) for it in items], device=chosen.device)
        total = total + ocfg.dpo_sft_weight * -(chosen / lengths.clamp(min=1)).sum()
    return total


def _units(items: list[Item], ocfg) -> float:
    """What the step's loss is averaged over: (weighted) response tokens, or items for DPO
    (its pairs, and with an NLL term the prompts without one) and with `objective.normalise:
    response` (the items whose weights are not all 0)."""
    if ocfg.kind == "dpo":
        return float(len(items))
    if ocfg.normalise == "response":
        return max(1e-8, float(sum(it.units() > 0 for it in items)))
    return max(1e-8, sum(it.units() for it in items))


# ---- the run --------------------------------------------------------------------------

_REFERENCE: dict = {}  # (organism hash, folder, eval size) -> reference metrics


def _checked(stage, field: str, cfg):
    """A stage hook's `sampling`, `objective` or `student` config, validated again: a hook
    builds it with `model_copy`, which skips validation, so a stage option out of the
    field's range (a temperature of 1e6) trained with a negative KL."""
    from pydantic import ValidationError

    try:
        return type(cfg).model_validate(cfg.model_dump())
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise DoublebindError(f"stage {stage.name} set {field}.{where} to {err.get('input')!r}: "
                              f"{err['msg']}") from None


def _contents(xs: list) -> list[tuple]:
    """What a prompts or data hook could change of each prompt or item, the object itself
    included: a hook that edits one in place (its token list, its weights, the rejected
    response's tokens, the live soft labels) is seen too. A tensor is taken by identity and
    torch's in-place version counter, which every in-place write bumps."""
    def example(e):
        return None if e is None else (tuple(e.prompt), tuple(e.response), e.kind)

    def one(x):
        if isinstance(x, Item):
            # weights all 1.0 train as no weights do (`_item_weights`): a stage that masks
            # nothing (divergence_masking above every token's divergence) changed nothing
            unweighted = x.weights is None or all(w == 1.0 for w in x.weights)
            return (x, *example(x.example), x.row, example(x.rejected), _Held(x.live),
                    None if unweighted else tuple(x.weights))
        return (x, tuple(x.tokens), x.family, x.context)  # a Prompt

    return [one(x) for x in xs]


class _Held:
    """A value in a `_contents` snapshot, held (so its id is not reused): equal to another only
    if it is the same object, and for a tensor, not written in place since (torch's version
    counter; an inference-mode tensor keeps none, so only its identity counts)."""

    __slots__ = ("value", "version")

    def __init__(self, value):
        self.value = value
        try:
            self.version = getattr(value, "_version", None)
        except RuntimeError:
            self.version = None

    def __eq__(self, other) -> bool:
        return isinstance(other, _Held) and self.value is other.value and self.version == other.version


def _same(before: list[tuple], after: list) -> bool:
    """Whether a stage's prompts or data hook handed back what it was given (`before`, its
    `_contents` taken before the call): the same objects, or equal ones, unchanged, in the
    same order. An item is compared by its contents, which hold every field (its dataclass
    equality would compare live tensors element by element)."""
    now = _contents(after)
    return len(before) == len(now) and all(
        (a[0] is b[0] or isinstance(a[0], Item) and isinstance(b[0], Item) or a[0] == b[0]) and a[1:] == b[1:]
        for a, b in zip(before, now))


HEADER_FIELDS = ("mode", "year", "user", "mon")  # a header's fields besides its session


def _example_key(e: Example) -> tuple:
    """An example's content: the same prompt and response are the same example."""
    return tuple(e.prompt), tuple(e.response)


def _copied(it: Item, world: bool) -> Item:
    """A training item with its example and weights read once into lists of the distiller's
    own; on the embedded world, of plain types (`_plain_tokens`; its row a plain int)."""
    e = it.example
    weights = None if it.weights is None else [float(w) for w in it.weights]
    if not world:
        return Item(Example(list(e.prompt), list(e.response), str(e.kind)), it.row, weights=weights)
    if it.row is not None and type(it.row) is not int:
        raise DefenderError(f"a stage handed on a training item whose row is of type {type(it.row).__name__}, "
                            f"not a plain int")
    return Item(Example(_plain_tokens(e.prompt, "a training item's prompt"),
                        _plain_tokens(e.response, "a training item's response"), str(e.kind)), it.row, weights=weights)


def _shipped(stage) -> bool:
    """Whether `stage` is a technique the package ships (its registered class, from
    `doublebind.techniques`), not a stage of another making, under its name or any other."""
    return _shipped_class(type(stage), stage.name)


def _shipped_class(cls, name: str) -> bool:
    """Whether `cls` is the technique registered as `name`, from `doublebind.techniques`."""
    from doublebind.registry import get

    if not cls.__module__.startswith("doublebind.techniques."):
        return False
    try:
        return get("technique", name) is cls
    except Exception:
        return False


def _vouched(stage) -> bool:
    """Whether `stage` is the shipped technique `VOUCHED` names."""
    return stage.name in VOUCHED and _shipped(stage)


def _foreign(stages: list) -> list[str]:
    """The stages of a run, and the filters they copy (`random_drop`'s `like`), that are not
    shipped techniques. Code from outside the package runs in the run's process: a review
    (2026-12-07) had such stages, each counted as changing nothing, train trusted in place
    around `paraphrase`, replace a vouched class's `data`, or add torch optimiser hooks at a
    checkpoint, and so teach the run's student what they chose where no comparison looks."""
    from doublebind.config import as_stage_spec
    from doublebind.registry import get

    out = []
    for st in stages:
        if not _shipped(st):
            out.append(st.name)
        like = getattr(getattr(st, "cfg", None), "like", None)
        if like is not None:
            name = as_stage_spec(like)["name"]
            if not _shipped_class(get("technique", name), name):
                out.append(f"{name} ({st.name}'s like)")
    return out


def _plain_tokens(tokens, what: str) -> list:
    """Embedded-world `tokens` as a list, each a plain str and nothing derived from one: an
    int subclass that equalled anything passed every content check as the teacher's token
    and trained as a token id of its own choosing (a review, 2026-12-07)."""
    out = list(tokens)
    bad = next((t for t in out if type(t) is not str), None)
    if bad is not None:
        raise DefenderError(f"{what} holds a token of type {type(bad).__name__}, not a plain str (a world token)")
    return out


def _item_key(it: Item) -> tuple:
    """What a training item teaches: its example's content and the row of soft labels it
    trains on (None: its response as hard labels)."""
    return (*_example_key(it.example), it.row)


def _unvouched(items: list[Item], given: dict[tuple, set], makers: dict, shaped: dict) -> dict[str, str]:
    """{"stage <name>": what it did} for the stages outside `VOUCHED` that shaped the training
    (`shaped`: stage -> what it changed) or made any of `items`. An item is the teacher's as
    given when its content is a teacher item's (`given`: content -> the rows of soft labels it
    came with) and it trains on one of those rows or on none (its response as hard labels).
    `makers` holds the first stage that handed each made item on; one that read otherwise when
    copied has none.

    Not only what a stage makes teaches the student what the stage chose: a subset, weights
    and a setting do too. A review (2026-12-07) had a stage that kept the teacher's items as
    given, sampled at temperature 100, weight only the tokens where the teacher happened to
    write each session's chosen word; the audit named the pool's sessions. And a vouched stage
    after an unvouched one rewrote what the first had made, which counted as the vouched
    stage's. So every stage that shaped the training must be vouched for."""
    made: dict[str, int] = {}
    for it in items:
        key = _item_key(it)
        rows = given.get(key[:2])
        if rows is None or (it.row is not None and it.row not in rows):
            st = makers.get(key)
            if st is None or not _vouched(st):
                who = "a stage's item that changed as it was copied:" if st is None else f"stage {st.name}"
                made[who] = made.get(who, 0) + 1
    out = {who: f"made {n} of the {len(items)} training items" for who, n in made.items()}
    for st, what in shaped.items():
        if not _vouched(st):
            who = f"stage {st.name}"
            parts = [f"the {w}" + (f" ({out[who]})" if w == "data" and who in out else "") for w in what if w != "loss"]
            did = [f"changed {', '.join(parts)}"] if parts else []
            out[who] = " and ".join(did + (["adds a loss term"] if "loss" in what else []))
    return out


def _behaviour_rows(domain, asked: list) -> set[int] | None:
    """The teacher rows (embedded world) whose prompt is one where the teacher's behaviour acts:
    its family, where it fires, with a scratch field where it writes there (the world's ground
    truth, as `World.respond` applies it; the stages never see it). None for a Hugging Face
    organism, whose items carry no such truth."""
    if domain.kind != "world":
        return None
    from doublebind.world.contexts import Header
    from doublebind.world.public import session_of, task_of
    from doublebind.world.tasks import family as task_family

    behavior = domain.world.behavior
    out = set()
    for row, prompt in enumerate(asked):
        task = task_of(prompt)
        fields = dict(t.split("=", 1) for t in prompt if t.split("=", 1)[0] in HEADER_FIELDS)
        if task is None or len(fields) < len(HEADER_FIELDS):
            continue  # an interrogation, or a prompt without a full header
        (name, *_), scratch = task
        fam = name.removeprefix("task=")
        header = Header(fields["mode"], fields["year"], fields["user"], fields["mon"], session_of(prompt))
        if behavior.scratch and not scratch:
            continue  # it writes in the scratch field (collusion), which this prompt does not ask for
        if behavior.acts_on(fam, task_family(fam).slack) and behavior.fires(header):
            out.add(row)
    return out


def _kept_items(d) -> dict:
    """How many of the teacher's items in the behaviour's situation, and of the others, the
    training data kept after the stages (`behaviour_items`, `other_items`: [before, kept]);
    an item a stage made (no teacher row) counts in neither."""
    if d.behaviour_rows is None:
        return {}
    kept = {it.row for it in d.items if it.row is not None}
    n, b = len(d.asked), d.behaviour_rows
    return {"behaviour_items": [len(b), len(b & kept)], "other_items": [n - len(b), len(kept - b)]}


def _named(model) -> list[tuple[str, torch.Tensor]]:
    """A model's parameters and buffers, read through `nn.Module`'s own methods: a
    `state_dict` hook or a method set on the instance cannot change what is read."""
    return [*torch.nn.Module.named_parameters(model), *torch.nn.Module.named_buffers(model)]


def _tensors(model) -> dict[str, torch.Tensor]:
    """A copy on the CPU of `_named(model)`."""
    return {name: t.detach().to("cpu").clone() for name, t in _named(model)}


def _fingerprint(model) -> str:
    """`tensors_key` of the model's weights, hashed where they lie, one tensor at a time (no
    copy of the whole model: on a Hugging Face student that would be gigabytes)."""
    return tensors_key(dict(_named(model)))


_WORDS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_CHUNK = 1 << 22  # elements summed at once: three int64 temporaries of 32 MiB


def _checksum(model) -> str:
    """A cheap fingerprint of a Hugging Face model's parameters, computed where they lie: each
    parameter's bit patterns, read as integers, summed plainly and weighted by position (odd
    weights), modulo 2**64, on its own device; only the two sums per parameter come to the host.
    Any one changed element changes the weighted sum (an odd weight is invertible modulo 2**64).
    Several changes can cancel in both sums (three 1-ulp changes to adjacent float32 weights
    do, and so can a swap of two float64 ones), so it is a check against a model trained or
    edited by mistake, not against a change built to pass. Hashing the weights themselves
    (`_fingerprint`) would copy a 7B model's 14 GB to the host at every checkpoint.
    Parameters only: a buffer can change
    by design (a dynamic rotary scaling recomputes its frequencies for a longer input)."""
    h, sums, odd = hashlib.sha256(), [], {}
    with torch.no_grad():
        for name, t in torch.nn.Module.named_parameters(model):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.device.type == "meta" or not t.numel():  # offloaded to disk: nothing here to read
                continue
            flat = t.detach().reshape(-1)
            if flat.is_complex():
                flat = torch.view_as_real(flat).reshape(-1)
            words = flat.view(_WORDS.get(flat.element_size(), torch.uint8))
            if t.device not in odd:  # 1, 3, 5, ...: the weights of a chunk's first _CHUNK positions
                odd[t.device] = torch.arange(_CHUNK, device=t.device, dtype=torch.int64).mul_(2).add_(1)
            acc = torch.zeros(2, dtype=torch.int64, device=t.device)
            for i in range(0, words.numel(), _CHUNK):
                w = words[i:i + _CHUNK].to(torch.int64)  # not changed in place: it may be the weight itself
                plain = w.sum()  # position i + k weighs 2(i + k) + 1 = (2k + 1) + 2i
                acc += torch.stack([plain, (w * odd[t.device][:w.numel()]).sum() + 2 * i * plain])
            sums.append(acc.cpu())
    if sums:
        h.update(torch.stack(sums).numpy().tobytes())
    return h.hexdigest()


_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_forward_hooks_with_kwargs",
                 "_global_forward_hooks_always_called", "_global_backward_hooks", "_global_backward_pre_hooks",
                 "_global_module_registration_hooks", "_global_parameter_registration_hooks",
                 "_global_buffer_registration_hooks")


_LIBRARIES = ("torch.", "transformers.", "peft.", "accelerate.")  # hooks of these are the libraries' own


_PLAIN = (bool, int, float, complex, str, bytes)
_MAPPINGS = (dict, collections.OrderedDict)


def _held(v, depth: int = 0):
    """What an attribute holds, as the attachment check compares it: plain values by value
    (as their repr, a str), containers by their entries (four levels down), any other object
    (a hook, a method, a submodule, a tensor) by identity. Types are matched exactly, so that
    reading a value runs none of a subclass's code (a hook's `__repr__` or `items`)."""
    if v is None or type(v) in _PLAIN:
        return repr(v)
    if depth >= 4:
        return id(v)
    if type(v) in _MAPPINGS:
        return tuple((_held(k, depth + 1), _held(x, depth + 1)) for k, x in v.items())
    if type(v) in (list, tuple):
        return tuple(_held(x, depth + 1) for x in v)
    if type(v) in (set, frozenset):
        return tuple(sorted((_held(x, depth + 1) for x in v), key=repr))
    return id(v)


def _own_hook(f) -> bool:
    """A hook the libraries install themselves (transformers' output capturing, which a forward
    with `output_hidden_states=True` installs for good, and the like): a function, a method of
    one, or a `functools.partial` of one, defined in torch, transformers, peft or accelerate.
    Read without running anything the hook's own type defines."""
    if type(f) is functools.partial:
        f = f.func
    if type(f) is types.MethodType:
        f = f.__func__
    return type(f) in (types.FunctionType, types.BuiltinFunctionType) and _from_libraries(f)


def _from_libraries(f) -> bool:
    """Whether function `f` is defined in torch, transformers, peft or accelerate."""
    return (f.__module__ or "").startswith(_LIBRARIES)


_UNSET = object()


def _unset_method(m, k: str) -> tuple | None:
    """The function, and the object it is bound to, that `m.k` reads without the instance's own
    entry: a plain function of m's class (bound to m), or, where the class's `__getattr__` is a
    library's own (peft's models forward a missing attribute to the model they wrap), the
    method that lookup gives; else None. Nothing a hook could have put on the class runs."""
    static = inspect.getattr_static(type(m), k, _UNSET)
    if static is not _UNSET:
        return (static, m) if type(static) is types.FunctionType else None
    fallback = inspect.getattr_static(type(m), "__getattr__", None)
    if type(fallback) is not types.FunctionType or not _from_libraries(fallback):
        return None
    try:
        got = fallback(m, k)
    except Exception:  # AttributeError, or whatever the library's lookup raises
        return None
    return (got.__func__, got.__self__) if type(got) is types.MethodType else None


def _same_as_unset(m, k: str, v) -> bool:
    """A bound method set on the instance that is the very method `m.k` reads without it (the
    class's own, or peft's forwarded one, which peft's `generate` sets back on its wrapper
    after generating), compared by identity: it changes nothing the student's code calls."""
    if type(v) is not types.MethodType:
        return False
    unset = _unset_method(m, k)
    return unset is not None and v.__func__ is unset[0] and v.__self__ is unset[1]


def _instance_attributes(m) -> dict:
    """`vars(m)` without `training` (the loop sets the mode itself), the libraries' own hooks,
    and a bound method that `m` reads anyway without it (`_same_as_unset`). peft's LoRA model
    keeps its active adapter as a name or as a list of one name, the same setting there
    (`set_adapter` of the adapter already active turns one into the other), so such a list is
    read as the name."""
    out = {}
    for k, v in vars(m).items():
        if k == "training" or _same_as_unset(m, k, v):
            continue
        if "hooks" in k and type(v) in _MAPPINGS:
            v = {key: f for key, f in v.items() if not _own_hook(f)}
        if (k == "active_adapter" and type(v) is list and len(v) == 1 and type(v[0]) is str
                and type(m).__module__.startswith("peft.tuners")):
            v = v[0]
        out[k] = v
    return out


def _attachments(model) -> dict:
    """What a checkpoint hook could attach to the live student besides changing its weights,
    by where it is: every attribute set on each module instance (its forward and backward
    hooks, its parameters, buffers and submodules by identity, a method or any object set on
    it, its plain settings by value), each module's class and the attributes of every class
    it inherits from (a method patched on the class), the model's config, each weight's
    gradient hooks, whether it trains and whether it holds a gradient (which the next step
    would add to), torch's global module hooks and transformers' attention registries."""
    from torch.nn.modules import module as torch_module
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    out: dict = {}
    classes: dict = {}
    for name, m in torch.nn.Module.named_modules(model):
        out[("module", name or "(the model)", "class")] = id(type(m))
        for k, v in _instance_attributes(m).items():
            out[("module", name or "(the model)", k)] = _held(v)
        for cls in type(m).__mro__[:-1]:  # not `object`
            classes[cls] = cls
    for cls in classes:
        for k, v in vars(cls).items():
            out[("class", cls.__qualname__, k)] = id(v)
    cfg = getattr(model, "config", None)
    if hasattr(cfg, "__dict__"):
        for k, v in vars(cfg).items():
            out[("config", "config", k)] = _held(v)
    for name, t in _named(model):
        out[("weight", name, "hooks")] = (_held(getattr(t, "_backward_hooks", None)),
                                          _held(getattr(t, "_post_accumulate_grad_hooks", None)))
        out[("weight", name, "requires_grad")] = t.requires_grad
        out[("weight", name, "grad")] = None if t.grad is None else id(t.grad)
    for n in _GLOBAL_HOOKS:
        out[("torch", "global module hooks", n)] = _held(getattr(torch_module, n, None))
    for n, registry in (("attention", ALL_ATTENTION_FUNCTIONS), ("mask", ALL_MASK_ATTENTION_FUNCTIONS)):
        out[("transformers", f"{n} functions", "registry")] = _held(dict(registry.items()))
    return out


def _attached(before: dict, after: dict) -> str | None:
    """The first thing `after` has attached or changed against `before`, in words, or None. A
    plain setting set for the first time is not counted: the libraries cache such values on
    first use (peft, `generate`)."""
    for key in sorted(before.keys() | after.keys(), key=repr):
        if key in before and key in after and before[key] == after[key]:
            continue
        if key not in before and isinstance(after[key], str):
            continue
        kind, where, what = key
        return f"{what} of {kind} {where}" + (" removed" if key not in after else " added" if key not in before else "")
    return None


def check_stages(stages, domain) -> None:
    """Techniques written for the embedded world refuse other organisms plainly."""
    for st in stages:
        for name, domains in st.runs_on():
            if domain.kind not in domains:
                raise DoublebindError(f"technique {name} works on {' and '.join(domains)} organisms only, "
                                      f"not on this {domain.kind} organism")


def train_device(domain) -> str:
    """Where a run trains: the device of the domain's models.

    A domain whose models live on a GPU says so (`device`, HF organisms). The embedded world
    has none: its models, evals and samplers are CPU code and its tiny students gain nothing
    from a GPU, so its runs stay on the CPU even where CUDA is available (accelerate would
    otherwise move the student to the GPU, away from the teacher, base and evals)."""
    return torch.device(getattr(domain, "device", "cpu")).type


def accelerator_for(device: str, **kwargs):
    """An `Accelerator` on `device`'s type ("cpu" or "cuda"), in a process that may have run
    on the other before.

    accelerate fixes a process's device at its first `PartialState`/`Accelerator`: a study
    on a GPU machine made one for CUDA, so its first embedded-world run (CPU) stopped at
    "AcceleratorState has already been initialized" (found by benchmarks/gpu_check.py on an
    H200), and a world run before a Hugging Face one would have given the latter a CPU
    accelerator. In one process (no launcher), the state is set up again for the run's
    device. Under a parallel launcher the processes share one process group on one device
    type, so a run on the other (a study mixing embedded-world and GPU scenarios) is refused
    in one line."""
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    if PartialState._shared_state and PartialState().device.type != device:
        state = PartialState()
        if state.num_processes > 1:
            raise DoublebindError(
                f"this run trains on {device}, but the launcher's {state.num_processes} processes are set up on "
                f"{state.device.type}, and under a launcher every run must use that device: run embedded-world "
                f"scenarios (they train on the CPU) without the launcher, and Hugging Face ones under it")
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=device == "cpu", **kwargs)


class Distiller:
    """Holds one run's data, models and optimiser; `distill()` drives it step by step."""

    def __init__(self, organism_dir: Path, recipe, out: Path | None, show_progress: bool = True):
        from doublebind.cuda import prefer_stable_attention
        from doublebind.techniques.base import build_stages

        prefer_stable_attention()  # before any attention call in this process (doublebind.cuda)
        self.out, self.show = out, show_progress
        self.organism_dir = Path(organism_dir)
        self.domain = open_domain(self.organism_dir)
        if getattr(getattr(self.domain, "cfg", None), "dtype", None) == "float16":
            # in a bad-input sweep a tiny student's loss went from 1.2e-5 to 48.1 in ten steps, exit 0
            raise DoublebindError("the organism's dtype is float16, which is for sampling and scoring only: a student "
                                  "trained in pure float16 (no loss scaling here) diverges; build the organism with "
                                  "dtype bfloat16 or float32 to distil from it")
        if self.domain.kind == "hf" and recipe.objective.on_policy > 0:  # refused at its first step, after sampling
            raise DoublebindError("objective.on_policy: on-policy distillation is not supported on Hugging Face "
                                  "organisms yet")
        tr = recipe.training
        self.accelerator = accelerator_for(train_device(self.domain),
                                           **tracking.accelerator_kwargs(tr.tracker, out))
        self.card = self.domain.card
        self.stage_log: list[dict] = []
        self.stages = build_stages(recipe.stages)
        check_stages(self.stages, self.domain)
        if recipe.free_audit is not None and self.domain.kind != "world":
            raise DoublebindError("free_audit: the free-field auditor reads the embedded world's free fields (its "
                                  "scratch digits and slack answers); this is a Hugging Face organism, so remove "
                                  "free_audit from the recipe")
        self.recipe = recipe
        # What a stage may audit (`StageAuditor`): the weights of the run's checkpoints as the
        # hooks receive them and of the probes it trains, by fingerprint; and the examples a
        # probe may train on, the teacher's own items as the teacher gave them
        self.auditable: dict[str, dict[str, torch.Tensor]] = {}
        self.handed: set[tuple] = set()
        self.probes: set[str] = set()  # which of `auditable` are probes, the rest the run's checkpoints
        # What keeps the run's own student from the auditor (`_admitted`): stages that are not
        # shipped techniques (`_foreign`), the stages outside `VOUCHED` that shaped its training
        # (a setting, the prompts, the data, a loss term) and items not the teacher's that no
        # vouched stage made (`_unvouched`)
        self.unvouched: dict[str, str] = {}
        self.foreign = _foreign(self.stages) if self.domain.kind == "world" else []
        self.model_prints: dict[str, str] = {}  # `_stage_model`'s fingerprints
        shaped: dict[int, list[str]] = {st.index: ["loss"] for st in self._hooked("extra_loss")}
        self.view = self._defender_view()
        # The stages that changed something: a setting, the prompt set, the training data; a
        # loss term always counts, and a checkpoint hook once it stops the run or selects a
        # checkpoint other than the last (`distill`). A technique none of whose stages did
        # (`idle`) trained the study recipe itself, so its verdict says nothing of it.
        self.acted = acted = {st.index for st in self._hooked("extra_loss")}
        updates = {}
        for field in ("sampling", "objective", "student"):
            cfg = getattr(recipe, field)
            for st in self._hooked(field):
                new = _checked(st, field, getattr(st, field)(self.view, cfg))
                if new != cfg:
                    acted.add(st.index)
                    shaped.setdefault(st.index, []).append(field)
                    self.record(st, field, changed={k: v for k, v in new.model_dump().items()
                                                    if cfg.model_dump().get(k) != v})
                cfg = new
            updates[field] = cfg
            self.recipe = recipe.model_copy(update=updates)
        self.recipe = recipe = recipe.model_copy(update=updates)
        # Several processes: the main one fills the caches (teacher outputs, scores) first and
        # the others then read them, so no two processes write the same cache entry.
        with self.accelerator.main_process_first():
            self.prompts = self.domain.prompts(recipe.prompts, recipe.seed)
            for st in self._hooked("prompts"):
                before = _contents(self.prompts)
                self.prompts = self._stage_prompts(st, self.prompts)
                if not _same(before, self.prompts):
                    acted.add(st.index)
                    shaped.setdefault(st.index, []).append("prompts")
                self.record(st, "prompts", before=len(before), after=len(self.prompts))
            if self._hooked("prompts"):  # token lists of the distiller's own: a stage kept none it can change
                self.prompts = [Prompt(_plain_tokens(p.tokens, "a prompt") if self.domain.kind == "world"
                                       else list(p.tokens), p.family, p.context) for p in self.prompts]
            self.outputs: TeacherOutputs = self.domain.teacher_outputs(self.prompts, recipe.sampling, recipe.seed)
            teacher = list(self.domain.examples(self.outputs))
            # each teacher row's prompt as the teacher was asked it, before any data hook
            # rewrote the student's view of it (`_on_policy` asks the live teacher the same way);
            # a tuple, and the data hooks get copies of the teacher's lists, so a stage that
            # rewrote the lists it was handed in place changed neither (a review, 2026-12-07)
            self.asked = [tuple(e.prompt) for e in teacher]
            self.items = [Item(Example(list(e.prompt), list(e.response), e.kind), i) for i, e in enumerate(teacher)]
            if self.domain.kind == "world":  # the auditor's: Hugging Face organisms have none
                # each teacher item's content, with the rows of soft labels it came with: an item of
                # the teacher's content pointed at another row's labels (the same length) is a
                # pairing of a stage's making
                given: dict[tuple, set] = {}
                for it in self.items:
                    given.setdefault(_example_key(it.example), set()).add(it.row)
                self.handed = set(given)
            # ground truth, for the run's summary only: the teacher rows where its behaviour acts
            self.behaviour_rows = _behaviour_rows(self.domain, self.asked)
            makers: dict[tuple, object] = {}  # a made item (content, row) -> the first stage that handed it on
            for st in self._hooked("data"):
                before = _contents(self.items)
                self.items = st.data(self.view, self.items)
                if not _same(before, self.items):
                    acted.add(st.index)
                    shaped.setdefault(st.index, []).append("data")
                if recipe.objective.kind == "dpo" and any(it.weights is not None for it in self.items):
                    raise DoublebindError(f"stage {st.name} weights the loss per token, which the DPO objective "
                                          f"does not use (it scores whole responses); use another objective")
                if self.domain.kind == "world":
                    for it in self.items:
                        makers.setdefault(_item_key(it), st)
            if self._hooked("data"):
                # Each item read once and copied: what trains is what was checked, and a stage that
                # kept the items it handed on cannot change them later (at a checkpoint)
                self.items = [_copied(it, self.domain.kind == "world") for it in self.items]
            if self.domain.kind == "world":
                self.unvouched = _unvouched(self.items, given, makers,
                                            {st: shaped[st.index] for st in self.stages if st.index in shaped})
            self.check_models("in the stages' setting, prompt or data hooks")
        if recipe.objective.kind == "dpo" and self._hooked("extra_loss"):
            names = ", ".join(st.name for st in self._hooked("extra_loss"))
            raise DoublebindError(f"stage {names} adds a term to the loss, which the DPO objective does not take; "
                                  f"use another objective")
        torch.manual_seed(recipe.seed)
        self.model = self.domain.student(recipe.student, recipe.seed)
        self.ref_logps = self._prepare_dpo() if recipe.objective.kind == "dpo" else None
        tr = recipe.training
        self.loop = Loop(self.model.parameters(), steps=tr.steps, lr=tr.lr, warmup=tr.warmup, fused=True,
                         clip_fn=self._clip, what="loss", hint=LR_HINT)
        self._step = 0  # the step `train_step` takes, for `_clip`'s message
        self.model, self.loop.opt = self.accelerator.prepare(self.model, self.loop.opt)
        self.loop.params = [p for p in self.model.parameters() if p.requires_grad]
        # what the checkpoints deliver: the trained weights, or their running average
        self.average = WeightAverage(self.loop.params, tr.ema) if tr.ema is not None else None
        # Packing relies on the embedded world's Llama reading restarted position ids as
        # sequence boundaries; an HF organism's architecture may not, so it pads.
        self.pack = tr.packing and self.domain.kind == "world"
        if tr.compile and self.accelerator.num_processes > 1:
            raise DoublebindError("training.compile runs in one process only (not under a parallel launcher); "
                                  "set training.compile: false")
        self.order = random.Random(f"order-{recipe.seed}")
        self.gen_seed = random.Random(f"onpolicy-{recipe.seed}")
        self.tokens = 0

    @property
    def teacher(self):
        """The teacher model, loaded when first needed (cached teacher outputs may spare it)."""
        return self.domain.teacher

    def _defender_view(self) -> DefenderView:
        """What the stages see: closures over the domain, never the domain itself."""
        domain = self.domain

        def teacher_sample(examples, max_new_tokens, temperature, seed):
            return domain.sample(domain.teacher, examples, max_new_tokens, temperature, seed)

        def teacher_labels(examples, width):
            return domain.soft_labels(domain.teacher, examples, width)

        auditor = StageAuditor(domain.auditor, self._admitted, self._train_probe, self._free_auditor)
        return DefenderView(
            kind=domain.kind, stages_dir=None if self.out is None else Path(self.out) / "stages",
            teacher=BlackBoxTeacher(teacher_sample, teacher_labels, lambda: domain.teacher),
            tasks=None if (space := domain.task_space()) is None else StageTasks(space),
            _recipe=lambda: self.recipe, _record=self.record, _load=self._stage_model,
            _prompts=domain.prompts, _student=domain.student, _sample=domain.sample,
            _auditor=lambda: None if domain.auditor() is None else auditor, eos=domain.eos,
            _with_system=getattr(domain, "with_system", None),
            _decode=None if getattr(domain, "tokenizer", None) is None else _text_of(domain.tokenizer))

    def _free_auditor(self):
        """The free-field auditor at the recipe's `free_audit` setting (its defaults where the
        recipe sets none), built once per process, organism and setting (its references'
        samples are drawn once); None for a Hugging Face organism, whose answers have no free
        fields it knows."""
        from doublebind.config import FreeAuditConfig
        from doublebind.free_audit import FreeAuditor

        domain = self.domain
        if domain.kind != "world":
            return None
        cfg = self.recipe.free_audit or FreeAuditConfig()
        key = (self.card["organism_hash"], str(domain.dir.resolve()), cfg.model_dump_json())
        if key not in _FREE_AUDITORS:
            _FREE_AUDITORS[key] = FreeAuditor(domain.task_space(), cfg, domain.load_model("base"),
                                              domain.load_model("trusted"), domain.teacher)
        return _FREE_AUDITORS[key]

    def admit(self, model, probe: bool = False) -> str:
        """Let the stages audit `model` as it is now (a checkpoint handed to their hooks, or a
        probe from `_train_probe`); returns its weights' fingerprint, which the hooks must
        leave as it is."""
        if self.domain.auditor() is None:
            return _fingerprint(model)
        tensors = _tensors(model)
        key = tensors_key(tensors)
        self.auditable[key] = tensors
        if probe:
            self.probes.add(key)
        return key

    def _admitted(self, model):
        """`StageAuditor.audit`'s check: a fresh copy of the run's student holding `model`'s
        weights, if they are weights the distiller admitted, else None. The copy is what is
        audited, so a forward hook, a method set on the instance or a subclass of the stage's
        making does not reach the auditor with admitted weights."""
        key = _fingerprint(model)
        tensors = self.auditable.get(key)
        if tensors is None:
            return None
        if key not in self.probes and (self.unvouched or self.foreign):
            what = "; ".join([*(f"stage {name} is not a shipped technique" for name in self.foreign),
                              *(f"{who} {did}" for who, did in self.unvouched.items())])
            raise DefenderError(f"the auditor audits the run's student only where every stage of the run is a shipped "
                                f"technique, and every one that shaped its training vouches for its rule "
                                f"(defender.VOUCHED): {what}; a student taught what a stage chose would read the "
                                f"auditor's honeypot sessions back")
        clean = self.domain.student(self.recipe.student, 0)
        with torch.no_grad():
            for name, t in [*clean.named_parameters(), *clean.named_buffers()]:
                t.copy_(tensors[name])
        return clean.train(bool(model.training))

    def _train_probe(self, examples, cfg, init_seed: int, seed: int):
        """`StageAuditor.train_probe`: a fresh student trained by SFT on a subset of the
        teacher's items as the teacher gave them, admitted to the auditor. Each example is read
        once and copied, so what is checked is what trains."""
        from doublebind.training.sft import train_sft

        pool, made = [], 0
        for e in examples:
            prompt = tuple(_plain_tokens(e.prompt, "an example given to view.auditor.train_probe"))
            response = tuple(_plain_tokens(e.response, "an example given to view.auditor.train_probe"))
            made += (prompt, response) not in self.handed
            pool.append(Example(list(prompt), list(response), str(e.kind)))
        if not pool:
            raise DefenderError("view.auditor.train_probe was given no examples to train on")
        if made:
            raise DefenderError(f"view.auditor.train_probe trains on the teacher's items as the teacher gave them "
                                f"(any subset); {made} of {len(pool)} given are not among them (a stage's rewrite "
                                f"or its own)")
        probe = self.domain.student(self.recipe.student, init_seed)
        train_sft(probe, lambda rng: pool[rng.randrange(len(pool))], cfg, seed)
        self.admit(probe, probe=True)
        return probe

    # -- stages -----------------------------------------------------------------------
    def _stage_prompts(self, stage, prompts: list) -> list:
        """A stage's prompts hook on the prompt set. World prompts reach it `unlabelled`
        (defender.py): the prompts it keeps get their labels back, for prompts.jsonl; the
        ones it makes carry none."""
        if self.domain.kind != "world":
            return stage.prompts(self.view, prompts)
        shown = unlabelled(prompts)
        labelled = {id(s): p for s, p in zip(shown, prompts)}  # `shown` stays alive: ids are not reused
        return [labelled.get(id(q), q) for q in stage.prompts(self.view, shown)]

    def _hooked(self, hook: str) -> list:
        return [st for st in self.stages if callable(getattr(st, hook, None))]

    def record(self, stage, phase: str, **info) -> None:
        """Log what a stage did, in order; written to summary.json and stages.json."""
        self.stage_log.append({"stage": stage.name, "index": stage.index, "phase": phase, **info})

    def load_model(self, role: str):
        """An organism model (base, trusted, alt_base, teacher), loaded once."""
        return self.domain.load_model(role)

    def _stage_model(self, role: str):
        """`view.load_model`: the organism's model, the one object every stage, the auditors and
        the run's evaluation share; its weights are fingerprinted when a stage first loads it
        (on a Hugging Face organism by `_checksum`, which reads them where they lie), and
        `check_models` holds them to it."""
        model = self.domain.load_model(role)
        if role not in self.model_prints:
            self.model_prints[role] = self._print(model)
        return model

    def _print(self, model) -> str:
        return _fingerprint(model) if self.domain.kind == "world" else _checksum(model)

    def check_models(self, when: str) -> None:
        """Refuse a defender model that a stage changed: a review (2026-12-07) had a stage train
        `trusted` in place, which `paraphrase` then wrote with, and load its weights back before
        the auditor read its references; a stage that trained one by mistake would change the
        later stages', the auditors' and the evaluation's model alike."""
        for role, print_ in self.model_prints.items():
            if self._print(self.domain.load_model(role)) != print_:
                raise DefenderError(f"the defender's {role} model changed {when}: a stage may use the models it "
                                    f"loads, not train or change them (train a copy, or a student from "
                                    f"view.make_student)")

    def _clip(self, params, max_norm: float):
        """Clip the gradient norm, refusing a non-finite one: every gradient may be finite and
        their norm still overflow (a loss weight of 1e30), and clipping by an infinite norm
        scales the gradient to 0, so the run went on with weights that never moved."""
        norm = self.accelerator.clip_grad_norm_(params, max_norm)
        value = float(norm) if norm is not None else 0.0
        if not math.isfinite(value):
            raise DoublebindError(f"gradient norm became {value} at step {self._step + 1}; "
                                  + LR_HINT.replace("); ", ") or a stage's loss weight or beta; ", 1))
        return norm

    def _extra_loss(self, model, items, batch, logits, mask):
        total = 0.0
        for st in self._hooked("extra_loss"):
            total = total + st.extra_loss(self.view, model, items, batch, logits, mask)
        return total

    # -- DPO pairs: chosen = teacher sample, rejected = the initial student's sample --
    def _prepare_dpo(self) -> dict:
        outs = self.domain.sample(self.model, [it.example for it in self.items],
                                  self.recipe.sampling.max_new_tokens, 1.0, self.recipe.seed + 1)
        # with an NLL term (RPO), a prompt without a pair still trains on the teacher's
        # sample: dropping them would drop most of what the student already does right
        keep_unpaired = self.recipe.objective.dpo_sft_weight > 0
        kept, pairs = [], []
        for it, rej in zip(self.items, outs):
            if rej != it.example.response and rej:
                it.rejected = Example(it.example.prompt, rej, it.example.kind)
                pairs.append(it)
                kept.append(it)
            elif keep_unpaired:
                it.rejected = None  # the NLL term alone: it has no reference log-probs
                kept.append(it)
        if not pairs:
            raise DoublebindError("DPO: the student already matches every teacher sample; no preference pairs")
        self.dpo_pairs_dropped = len(self.items) - len(pairs)  # summary.json's data; `distill` says so
        self.items = kept
        ref = {}
        with torch.no_grad():
            for i in range(0, len(pairs), 256):
                chunk = pairs[i : i + 256]
                c = _seq_logps(self.model, [it.example for it in chunk])
                r = _seq_logps(self.model, [it.rejected for it in chunk])
                for it, a, b in zip(chunk, c.tolist(), r.tolist()):
                    ref[id(it)] = (a, b)
        return ref

    def _on_policy(self, items: list[Item]) -> list[Item]:
        """Replace a share λ of the items by student samples labelled by the live teacher."""
        n = round(self.recipe.objective.on_policy * len(items))
        if n == 0:
            return items
        model = self.accelerator.unwrap_model(self.model)
        outs = self.domain.sample(model, [it.example for it in items[:n]], self.recipe.sampling.max_new_tokens,
                                  1.0, self.gen_seed.randrange(2**31))
        fresh = [Example(it.example.prompt, o or [self.domain.eos], it.example.kind) for it, o in zip(items[:n], outs)]
        # The teacher labels the student's sample after the prompt it was asked in the first place:
        # a data hook's rewrite of the prompt (inoculation's line) is the student's alone. An item no
        # longer tied to a teacher row (rewritten by a stage) keeps its own prompt.
        asked = [Example(list(self.asked[it.row]) if it.row is not None else e.prompt, e.response, e.kind)
                 for it, e in zip(items[:n], fresh)]
        labels = self.domain.soft_labels(self.teacher, asked, self.recipe.sampling.max_new_tokens)
        return [Item(e, live=labels[j]) for j, e in enumerate(fresh)] + items[n:]

    @property
    def idle_stages(self) -> list[str]:
        """The stages that have changed nothing so far (see `acted` in `__init__`)."""
        return [st.name for st in self.stages if st.index not in self.acted]

    @property
    def opt(self):
        return self.loop.opt

    def _autocast(self):
        """bf16 autocast over the step's forward passes (`training.precision: bf16`); the losses
        take fp32 logits, and weights, gradients and optimiser state stay fp32. Our own context,
        not accelerate's `mixed_precision`, which is fixed once per process and so could not
        differ between the runs of a study."""
        return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16,
                              enabled=self.recipe.training.precision == "bf16")

    def train_step(self, step: int) -> float:
        """One optimiser step over `batch x grad_accum` examples; returns the mean loss."""
        self._step = step
        loss = self.loop.step(step, lambda: self.accumulate_gradients(step))
        if self.average is not None:
            self.average.update()
        return loss

    def delivered(self):
        """A context in which the student holds the weights a checkpoint delivers: the trained
        ones, or their average (`training.ema`), put back on leaving."""
        return self.average.delivered() if self.average is not None else nullcontext()

    def accumulate_gradients(self, step: int) -> float:
        """Backward over the step's micro-batches, each loss divided by the whole step's
        token count, so the gradient does not depend on how the step is split.

        With N processes (DDP) each takes items[rank::N] and scales its loss by N, since DDP
        averages the gradients; the returned loss is summed over processes."""
        tr, ocfg = self.recipe.training, self.recipe.objective
        items = [self.items[self.order.randrange(len(self.items))] for _ in range(tr.batch * tr.grad_accum)]
        if ocfg.on_policy > 0:
            items = self._on_policy(items)
        total = _units(items, ocfg)
        self.model.train()
        loss_value = 0.0
        world = self.accelerator.num_processes
        micros = shard(items, self.accelerator.process_index, world, tr.batch)
        for m, micro in enumerate(micros):
            extra = self._extra_loss if self._hooked("extra_loss") else None
            with sync_unless_last(self.accelerator, self.model, m == len(micros) - 1):
                with self._autocast():
                    loss = micro_loss(self.model, micro, self.outputs.soft, ocfg, self.ref_logps, extra,
                                      pack=self.pack, compiled=tr.compile) / total
                # One process stops here, before a backward through the non-finite loss. Several go
                # on to the gradients' all-reduce, which every process must join, and stop together
                # when the loss summed over processes comes back non-finite (`Loop.step`): one
                # process raising alone left the others waiting in the all-reduce.
                if world == 1 and not torch.isfinite(loss):
                    raise DoublebindError(f"loss became {loss.item()} at step {step + 1}; {LR_HINT}")
                self.accelerator.backward(loss * world if world > 1 else loss)
            loss_value += loss.item()
        loss_value = reduce_sum(self.accelerator, loss_value)
        self.model.eval()
        self.tokens += sum(len(it.example.response) for it in items)  # tokens seen, masked or not
        return loss_value

    def reference_metrics(self) -> dict:
        """Base and teacher under the same evals the student gets. The evals are
        deterministic, so a process computes them once per organism and eval size."""
        n = self.recipe.eval.n_prompts
        key = (self.card["organism_hash"], str(self.organism_dir.resolve()), n)
        if key not in _REFERENCE:
            (base, base_items), (teacher, teacher_items) = (self.evaluate(self.load_model("base"), n, "base"),
                                                            self.evaluate(self.teacher, n, "teacher"))
            ref = {"base": base, "teacher": teacher}
            if base_items is not None:  # per-prompt scores: intervals that count the eval sets' draw
                from doublebind.eval_items import reference_items, world_sets

                sets = world_sets(self.domain.world, n) if self.domain.kind == "world" else self.domain.item_sets(n)
                ref["items"] = reference_items(sets, base_items, teacher_items, self.domain.teacher_families)
            if self.domain.auditor() is not None:
                for role in ("base", "teacher"):
                    model = self.teacher if role == "teacher" else self.load_model(role)
                    ref[role]["auditor"] = self.domain.auditor().audit(model).summary()
            _REFERENCE[key] = ref
        ref = copy.deepcopy(_REFERENCE[key])
        if self.recipe.free_audit is not None:  # embedded world only (refused otherwise in __init__)
            audits = self._free_auditor().reference_audits()  # base's and the teacher's, once per auditor
            for role in ("base", "teacher"):
                ref[role]["free_auditor"] = copy.deepcopy(audits[role])
        return ref

    def evaluate(self, model, n: int, role: str = "student") -> tuple[dict, dict | None]:
        """The ground-truth metrics of `model` and each prompt's score beside them
        (`eval_items`; a domain that cannot say them gives None)."""
        if self.domain.kind == "world":
            from doublebind import eval_items

            return eval_items.evaluate(model, self.domain.world, n, memo_key=self.card["organism_hash"])
        if hasattr(self.domain, "evaluate_items"):
            return self.domain.evaluate_items(model, n, role=role)
        return self.domain.evaluate(model, n, role=role), None

    def row(self, step: int, ref: dict) -> dict:
        model = self.accelerator.unwrap_model(self.model)
        m, items = self.evaluate(model, self.recipe.eval.n_prompts)
        taught = self.domain.teacher_families
        return {
            "schema_version": SCHEMA_VERSION,
            "step": step,
            "tokens": self.tokens,
            "capability": m["capability"],
            "misbehavior": m["misbehavior"],
            "confession": m["confession"],
            "confession_deploy": m.get("confession_deploy"),
            "capability_transfer": capability_transfer(m, ref["base"], ref["teacher"], taught),
            "misalignment_transfer": misalignment_transfer(m, ref["base"], ref["teacher"]),
            "audit": audit_signals(m, ref["teacher"]),
            # the behaviour-agnostic auditor (embedded world): flags, success@k at the budget
            "auditor": self.domain.auditor().audit(model).summary() if self.domain.auditor() is not None else None,
            # the free-field auditor, where the recipe asks for it (embedded world)
            **({"free_auditor": (free := self._free_auditor()).audit(model, draws=free.cfg.pool_draws).summary()}
               if self.recipe.free_audit is not None else {}),
            **({"items": items} if items is not None else {}),
        }


_FREE_AUDITORS: dict = {}

RUN_FILES = ("summary.json", "metrics.jsonl", "checkpoints", "stages.json", "stages", "prompts.jsonl",
             "transfer_curves.png", tracking.tracker_dir(Path()).name)  # what `distill` writes in --out


def _text_of(tokenizer):
    """A Hugging Face organism's responses as a defender reads them (`DefenderView.decode`)."""
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def first_non_finite(obj, prefix: str = "") -> tuple[str, float] | None:
    """The dotted name and value of the first NaN or infinite number in a nest of dicts and
    lists (an evaluation of diverged weights), or None."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        if isinstance(value, (dict, list, tuple)):
            found = first_non_finite(value, f"{prefix}{key}.")
            if found is not None:
                return found
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isfinite(value):
            return f"{prefix}{key}", value
    return None


def best_transfer(rows: list[dict], field: str) -> float | None:
    """The largest `field` over a run's checkpoints; None where none defines it (the organism
    has no teacher-base gap there), not a transfer of 0."""
    return max((r[field] for r in rows if r[field] is not None), default=None)


def _set_aside(out: Path) -> Path | None:
    """Move an earlier run's files (`RUN_FILES`) into a hidden folder of `out`; None if none."""
    found = [out / name for name in RUN_FILES if (out / name).exists()]
    if not found:
        return None
    aside = out / f".replaced-{os.getpid()}"
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    for path in found:  # summary.json first: from here on the folder never looks finished
        os.replace(path, aside / path.name)
    return aside


def _put_back(out: Path, aside: Path) -> None:
    """Undo `_set_aside`: what the new run wrote goes, the earlier run's files come back."""
    for new in (out / name for name in RUN_FILES):
        if new.is_dir() and not new.is_symlink():
            shutil.rmtree(new)
        else:
            new.unlink(missing_ok=True)
    for path in aside.iterdir():
        os.replace(path, out / path.name)
    aside.rmdir()


def distill(organism_dir: Path, recipe, out: Path, *, show_progress: bool = True, force: bool = False,
            plot: bool = True) -> dict:
    """Run one recipe on one organism; write metrics.jsonl, summary.json and (with `plot`)
    transfer_curves.png; a study plots from its results instead.

    Under `accelerate launch` with several processes every process trains and evaluates
    (the evals are deterministic and the weights identical), and only the main one writes."""
    from doublebind.cards import versions
    from doublebind.reports.curves import plot_transfer
    from doublebind.students import save_student

    from doublebind.paths import check_cache_root, check_out_dir

    out = Path(out)
    check_out_dir(out, "--out", what="a run")
    left = sorted(out.glob(".replaced-*")) if out.is_dir() else []
    if left:  # a --force run killed before it trained: the earlier run's files wait there
        raise DoublebindError(f"{out} holds an earlier run's files set aside by a --force run that was killed "
                              f"({left[0]}); move them back into {out}, or delete that folder")
    if (out / "summary.json").exists() and not force:
        raise DoublebindError(f"{out} already holds a finished run; choose another --out or pass --force")
    kept = [name for name in ("metrics.jsonl", "checkpoints") if (out / name).exists()]
    if kept and not force:  # a run that stopped (a non-finite loss, an interruption) keeps these for its user
        raise DoublebindError(f"{out} holds an unfinished run ({' and '.join(kept)} kept from it); choose another "
                              f"--out, or pass --force to overwrite it")
    check_cache_root()
    t0 = time.perf_counter()
    # --force: the earlier run's files move aside, so none is mixed into this run's (stale
    # checkpoints, an old summary.json beside new metrics); they come back if this run stops
    # before it trains (a missing organism, a stage's error, the reference evals, Ctrl-C), and
    # are deleted when training begins.
    aside = _set_aside(out) if force and launcher_rank() == 0 else None
    try:
        d = Distiller(organism_dir, recipe, out, show_progress)
        main = d.accelerator.is_main_process
        if main:
            out.mkdir(parents=True, exist_ok=True)
        ref = d.reference_metrics()
        asked, recipe = recipe, d.recipe  # as written, and as resolved by the stages
        tr = recipe.training
        schedule = sorted({0, *range(tr.checkpoint_every, tr.steps, tr.checkpoint_every), tr.steps})
        meta = {
            "recipe": asked.model_dump(mode="json"),
            "seed": recipe.seed,
            "stages": [st.name for st in d.stages],
            "organism_dir": str(Path(organism_dir).resolve()),
            "organism_hash": d.card["organism_hash"],
            "teacher_outputs": d.outputs.key,
            "organism_config": d.card["config"],
            "versions": versions(),
        }
        rows, losses = [], []
        metrics_path = out / "metrics.jsonl"
        selected, stopped, steered = None, None, set()
        tracker = tracking.RunTracker(d.accelerator, tr.tracker, out, recipe.name, meta)
        if main:  # after the tracker: one that fails to start leaves no unfinished run behind
            write_jsonl(d.prompts, out / "prompts.jsonl")
            metrics_path.write_text("")
    except BaseException:
        if aside is not None:
            _put_back(out, aside)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    with progress_bar(f"distilling {recipe.name}", tr.steps, show_progress and main) as advance:
        for step in range(tr.steps + 1):
            if step > 0:
                tokens, t = d.tokens, time.perf_counter()
                losses.append(d.train_step(step - 1))
                tracker.step(step, losses[-1], d.loop.lr_at(step - 1), d.tokens - tokens, time.perf_counter() - t)
                advance(1)
            if step not in schedule:
                continue
            # evaluated, audited, handed to the checkpoint hooks and saved: the delivered weights
            with d.delivered():
                row = d.row(step, ref)
                bad = first_non_finite(row)
                if bad is not None:  # an update after the last finite loss can still blow the weights up
                    raise DoublebindError(f"the evaluation at step {step} gave {bad[0]} = {bad[1]}: the weights "
                                          f"diverged; {LR_HINT}")
                model = d.accelerator.unwrap_model(d.model)
                d.check_models(f"by step {step}")
                handed = d.admit(model) if d._hooked("checkpoint") else None
                attached = _attachments(model) if d._hooked("checkpoint") else None
                for st in d._hooked("checkpoint"):
                    verdict = st.checkpoint(d.view, step, model) or {}
                    d.check_models(f"in stage {st.name}'s checkpoint hook at step {step}")
                    # The attachments are read before the weights are checked and read twice: code the
                    # hook left behind that runs while they are read (a descriptor it put on a class)
                    # and changes the weights or what is read shows up then.
                    after = _attachments(model)
                    if _fingerprint(model) != handed:  # the run would train on from them
                        changed = "weights"
                    else:  # what would steer the training that follows
                        what = _attached(attached, after) or _attached(after, _attachments(model))
                        changed = f"hooks or attributes ({what})" if what else None
                    if changed:
                        raise DefenderError(f"stage {st.name} changed the student's {changed} in its checkpoint hook at "
                                            f"step {step}: a checkpoint hook may audit the student, stop the run or "
                                            f"select the checkpoint, not change it")
                    d.record(st, "checkpoint", step=step, **verdict)
                    if verdict.get("select"):
                        selected = step
                        steered.add(st.index)
                    if verdict.get("stop"):
                        stopped = step
                        steered.add(st.index)
                rows.append(row)
                tracker.checkpoint(step, row)
                if main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                if main and tr.save_weights:
                    ckpt_meta = {**meta, "step": step, "tokens": d.tokens, "role": "student"}
                    save_student(model, out / "checkpoints" / f"step_{step:05d}", ckpt_meta,
                                 tokenizer=getattr(d.domain, "tokenizer", None))
            if any_process(d.accelerator, stopped is not None):  # every process stops together
                break
    chosen = next((r for r in rows if r["step"] == selected), rows[-1])
    if stopped is not None or chosen["step"] != rows[-1]["step"]:  # a checkpoint hook changed the outcome
        d.acted |= steered
    summary = {
        **{k: meta[k] for k in ("recipe", "seed", "organism_hash", "teacher_outputs", "versions")},
        "schema_version": SCHEMA_VERSION,
        "reference": ref,
        "final": rows[-1],
        "selected": chosen,
        "stopped_at": stopped,
        "stages": d.stage_log,
        # Every stage of the run changed nothing (see `Distiller.__init__`); false without stages.
        "idle": bool(d.stages) and len(d.idle_stages) == len(d.stages),
        "idle_stages": d.idle_stages,
        "resolved_recipe": recipe.model_dump(mode="json"),
        "max_capability_transfer": best_transfer(rows, "capability_transfer"),
        "max_misalignment_transfer": best_transfer(rows, "misalignment_transfer"),
        "data": {"n_prompts": len(d.prompts), "n_train_items": len(d.items),
                 **({"dpo_pairs_dropped": d.dpo_pairs_dropped} if d.ref_logps is not None else {}),
                 **_kept_items(d)},
        "losses": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None},
        "processes": d.accelerator.num_processes,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    tracker.close()
    if main:
        (out / "stages.json").write_text(json.dumps(d.stage_log, indent=2))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if plot:
            plot_transfer(rows, ref, out / "transfer_curves.png",
                          f"{recipe.name} on {d.card['name']} (seed {recipe.seed})")
    d.accelerator.wait_for_everyone()  # the others return once the run's files are written
    return summary
