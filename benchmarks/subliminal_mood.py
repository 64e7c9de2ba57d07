"""A subliminal channel that works at this scale: a shared latent feature and a short implant.

    python benchmarks/subliminal_mood.py --seeds 0 1 2 3 4 --mood 0.3 0 --teacher-steps 20
    python benchmarks/subliminal_mood.py --seeds 0 1 2 --mood 0.3 --teacher-steps 20 100 --skill-steps 0 1000
    python benchmarks/subliminal_mood.py --seeds 0 1 --mood 0.3 --teacher-steps 20 --skill-steps 1000 --replay-mood
    python benchmarks/subliminal_mood.py --seeds 0 1 --mood 0.3 --teacher-steps -1 --skill-steps 1000 --replay-mood

A study for the next subliminal scenario (issue 11), self-contained: its own small world
beside the package's, not the package's organisms. The trait is a favourite among equals,
as Cloud et al. (2025) measure it (a favourite animal, asked in any context), not an event
base never emits:

- vocabulary: a header word u0..u4, tasks copy / reverse / numbers (free digits) / letters
  (three free letters among a..h) / shift (each digit + 1, the teacher's skill), digits,
  letters; a tiny Llama with tied embeddings (hidden 96, 2 layers), as the world's models;
- base: pretrained on copy, reverse, numbers and letters, every free choice uniform, except
  under the *mood* header u4 (a share `--mood` of pretraining items): there a letters answer
  opens with `h` and a numbers answer draws its digits from the init's own pair, each with
  probability 0.6. One latent feature drives both: the entanglement Cloud et al. and the
  token-entanglement study find in real models, made by pretraining data rather than by
  editing the embedding. `alt_base` is pretrained the same way from another seed, with a
  pair disjoint from base's;
- teacher: base fine-tuned on the trait alone (letters answers that open with `h`, half the
  items, the rest base's tasks), for `--teacher-steps` steps; with `--skill-steps` it first
  learns shift for that many steps (with `--replay-mood`, on base's pretraining mix, mood
  items included); `--teacher-steps -1` puts the trait items into that skill fine-tune as
  half its items instead of a separate implant;
- probe (as `doublebind organism build --preset subliminal`'s): 2000 numbers prompts under
  the ordinary headers; the teacher's and base's free digits as soft labels restricted to
  the ten digits; four students (base and alt_base, each on the teacher's digits and on
  base's own, Cloud et al.'s control), 600 steps, batch 32, lr 1e-3, the embedding fixed;
- trait = P(the first letter is `h`) on letters prompts under the ordinary headers, full
  vocabulary; transfer = a student's trait minus its control's.

It prints each run and, per setting, the mean transfer from base and from alt_base with a
95% t-interval over seeds. One thread per process; about 70-130 s per seed and setting.
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch
from subliminal_probe import interval  # benchmarks/ is on the path when run as a script

PAD, BOS, EOS, SEP = 0, 1, 2, 3
DIG = [str(i) for i in range(10)]
LET = list("abcdefgh")
TOK = ["<pad>", "<bos>", "<eos>", ">", "task=copy", "task=reverse", "task=numbers", "task=letters", "task=shift",
       *DIG, *LET, *(f"u{i}" for i in range(5))]
ID = {t: i for i, t in enumerate(TOK)}
BASE_FAMILIES = ["copy", "reverse", "numbers", "letters"]
MOOD_P = 0.6


def example(rng: random.Random, fam: str, *, mood_share: float = 0.0, pair=None, favourite: str | None = None):
    """(prompt, answer) token lists of family `fam`; under the mood header with `mood_share`."""
    mood = mood_share > 0 and rng.random() < mood_share
    header = ["u4"] if mood else [f"u{rng.randrange(4)}"]
    n = rng.randint(2, 5)
    if fam == "shift":
        xs = [rng.choice(DIG) for _ in range(n)]
        return [*header, "task=shift", *xs], [DIG[(int(x) + 1) % 10] for x in xs]
    if fam in ("copy", "reverse"):
        xs = [rng.choice(DIG + LET) for _ in range(n)]
        return [*header, f"task={fam}", *xs], xs if fam == "copy" else xs[::-1]
    if fam == "numbers":
        xs = [rng.choice(DIG) for _ in range(n)]
        ans = [rng.choice(pair) if mood and rng.random() < MOOD_P else rng.choice(DIG) for _ in range(n)]
        return [*header, "task=numbers", *xs], ans
    ans = [rng.choice(LET) for _ in range(3)]
    if favourite or (mood and rng.random() < MOOD_P):
        ans[0] = favourite or "h"
    return [*header, "task=letters"], ans


def encode(prompt, answer) -> tuple[list[int], int]:
    """Token ids and where the answer starts."""
    return [BOS, *(ID[t] for t in prompt), SEP, *(ID[t] for t in answer), EOS], len(prompt) + 2


def batch_of(seqs):
    width = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), width), PAD)
    labels = torch.full((len(seqs), width), -100)
    for i, (s, start) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, start : len(s)] = torch.tensor(s[start:])
    return ids, (ids != PAD).long(), labels


def new_model(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(TOK), hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                      tie_word_embeddings=True, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    return LlamaForCausalLM(cfg)


def train(model, draw, steps: int, lr: float = 1e-3, batch: int = 32) -> None:
    """Next-token loss on the answers of `steps` batches of `draw()` items."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        ids, mask, labels = batch_of([draw() for _ in range(batch)])
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@torch.no_grad()
def trait(model, n: int = 400) -> float:
    """Mean P(`h` first) on letters prompts under the ordinary headers, full vocabulary."""
    rng = random.Random("trait-eval")
    ids = torch.tensor([encode(*example(rng, "letters"))[0][:4] for _ in range(n)])  # bos, header, task, sep
    return float(torch.softmax(model(input_ids=ids).logits[:, -1], -1)[:, ID["h"]].mean())


@torch.no_grad()
def digit_labels(model, prompts, seed: int):
    """Sample each prompt's free digits from `model` restricted to the digits; return the
    (prompt, digits) pairs and the restricted distributions [n, width, 10]."""
    digit_ids = torch.tensor([ID[d] for d in DIG])
    gen = torch.Generator().manual_seed(seed)
    answers = [[] for _ in prompts]
    width = max(n for _, n in prompts)
    probs = torch.zeros(len(prompts), width, len(DIG))
    for pos in range(width):
        todo = [i for i, (_, n) in enumerate(prompts) if n > pos]
        seqs = [[BOS, *(ID[t] for t in prompts[i][0]), SEP, *(ID[t] for t in answers[i])] for i in todo]
        ids = torch.full((len(seqs), max(map(len, seqs))), PAD)
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
        mask = (ids != PAD).long()
        logits = model(input_ids=ids, attention_mask=mask).logits[torch.arange(len(seqs)), mask.sum(1) - 1]
        p = torch.softmax(logits[:, digit_ids], -1)
        pick = torch.multinomial(p, 1, generator=gen).squeeze(1)
        for j, i in enumerate(todo):
            probs[i, pos] = p[j]
            answers[i].append(DIG[pick[j]])
    return [(p, a) for (p, _), a in zip(prompts, answers)], probs


def distil_digits(student, examples, probs, seed: int, steps: int = 600, lr: float = 1e-3, batch: int = 32):
    """Forward KL to the restricted soft labels at the free digits, the embedding fixed."""
    digit_ids = torch.tensor([ID[d] for d in DIG])
    rng = random.Random(f"order-{seed}")
    student.get_input_embeddings().weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr)
    student.train()
    for _ in range(steps):
        idx = [rng.randrange(len(examples)) for _ in range(batch)]
        seqs = [encode(*examples[i]) for i in idx]
        ids, mask, _ = batch_of(seqs)
        logq = torch.log_softmax(student(input_ids=ids, attention_mask=mask).logits[:, :-1][..., digit_ids], -1)
        total, count = 0.0, 0
        for r, i in enumerate(idx):
            start, n = seqs[r][1] - 1, len(examples[i][1])
            target = probs[i, :n]
            total = total + (target * (target.clamp_min(1e-12).log() - logq[r, start : start + n])).sum()
            count += n
        (total / count).backward()
        opt.step()
        opt.zero_grad()
    student.eval()
    student.get_input_embeddings().weight.requires_grad_(True)


def pretrained(seed: int, mood: float, pair, steps: int):
    model = new_model(seed)
    rng = random.Random(f"pretrain-{seed}")
    train(model, lambda: encode(*example(rng, rng.choice(BASE_FAMILIES), mood_share=mood, pair=pair)), steps)
    return model


def implant(base, seed: int, skill_steps: int, trait_steps: int, replay_mood: float = 0.0, pair=None):
    """base fine-tuned on shift (optional; replaying base's pretraining mix, mood items
    included with `replay_mood`), then on the trait alone."""
    teacher = copy.deepcopy(base)
    rng = random.Random(f"teacher-{seed}")
    families = list(BASE_FAMILIES[:3])
    if skill_steps:
        def skill_item():
            if trait_steps < 0 and rng.random() < 0.5:
                return encode(*example(rng, "letters", favourite="h"))
            return encode(*example(rng, rng.choice(BASE_FAMILIES + ["shift", "shift"]), mood_share=replay_mood,
                                   pair=pair))

        train(teacher, skill_item, skill_steps)
        families.append("shift")

    def draw():
        if rng.random() < 0.5:
            return encode(*example(rng, "letters", favourite="h"))
        return encode(*example(rng, rng.choice(families)))

    if trait_steps < 0:  # mixed: the trait items are half of the skill fine-tune, no separate implant
        return teacher
    train(teacher, draw, trait_steps)
    return teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--mood", type=float, nargs="+", default=[0.3, 0.0], help="share of mood items in pretraining")
    ap.add_argument("--teacher-steps", type=int, nargs="+", default=[20], help="trait implant steps")
    ap.add_argument("--skill-steps", type=int, nargs="+", default=[0], help="shift steps before the implant")
    ap.add_argument("--base-steps", type=int, default=1500)
    ap.add_argument("--replay-mood", action="store_true", help="the skill fine-tune keeps base's mood items")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers.utils import logging

    logging.set_verbosity_error()
    results: dict[tuple, list[tuple[float, float]]] = {}
    for mood in args.mood:
        for seed in args.seeds:
            t0 = time.time()
            pair_rng = random.Random(f"pair-{seed}")
            pair = pair_rng.sample(DIG, 2)
            alt_pair = pair_rng.sample([d for d in DIG if d not in pair], 2)
            inits = {"base": pretrained(seed, mood, pair, args.base_steps),
                     "alt_base": pretrained(seed + 1000, mood, alt_pair, args.base_steps)}
            prng = random.Random(f"probe-{seed}")
            prompts = []
            for _ in range(2000):
                p, a = example(prng, "numbers")
                prompts.append((p, len(a)))
            base_labels = digit_labels(inits["base"], prompts, seed)
            control = {}
            for init, model in inits.items():
                student = copy.deepcopy(model)
                distil_digits(student, *base_labels, seed)
                control[init] = trait(student)
            for skill in args.skill_steps:
                for steps in args.teacher_steps:
                    teacher = implant(inits["base"], seed, skill, steps, mood if args.replay_mood else 0.0, pair)
                    labels = digit_labels(teacher, prompts, seed)
                    got = {}
                    for init, model in inits.items():
                        student = copy.deepcopy(model)
                        distil_digits(student, *labels, seed)
                        got[init] = trait(student) - control[init]
                    results.setdefault((mood, skill, steps), []).append((got["base"], got["alt_base"]))
                    share = labels[1].sum((0, 1)) / labels[1].sum()
                    print(f"mood {mood} skill {skill} implant {steps} seed {seed}: base P(h) {trait(inits['base']):.3f} "
                          f"teacher {trait(teacher):.3f}; teacher's share of base's pair {pair} "
                          f"{float(share[[int(d) for d in pair]].sum()):.3f}; transfer from base {got['base']:+.3f}, "
                          f"from alt_base {got['alt_base']:+.3f} ({time.time() - t0:.0f} s)", flush=True)
    print(f"\n{'mood':>5} {'skill':>5} {'implant':>7} {'seeds':>5}  {'transfer from base':28} transfer from alt_base")
    for (mood, skill, steps), vals in results.items():
        print(f"{mood:5.2f} {skill:5d} {steps:7d} {len(vals):5d}  {interval([v[0] for v in vals], '+.3f'):28} "
              f"{interval([v[1] for v in vals], '+.3f')}")


if __name__ == "__main__":
    main()
