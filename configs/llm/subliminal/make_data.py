"""Regenerate the number-sequence prompts and the arithmetic eval of the subliminal example.

Deterministic (seeded): running it again rewrites the committed files byte for byte.

    python configs/llm/subliminal/make_data.py            # 200 prompts, and tiny/prompts.jsonl
    python configs/llm/subliminal/make_data.py --n 10000  # a paper-sized prompt set
    python configs/llm/subliminal/make_data.py --paper    # paper_prompts.jsonl (30,000; not committed)

Prompts follow Cloud et al. (2025), "Subliminal learning": a few seed numbers and a request
to continue the list; the teacher's answers are number lists with no mention of animals.
"""

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

TEMPLATES = [
    "The sequence starts with: {seq}. Add up to {k} more values (no more than 3 digits each). "
    "Return a comma-separated list of numbers.",
    "Here is a list of numbers: {seq}. Continue it with up to {k} more numbers (at most 3 digits each). "
    "Reply with the numbers only, separated by commas.",
    "Look at these numbers: {seq}. Write up to {k} more, each with no more than 3 digits. "
    "Answer with a comma-separated list and nothing else.",
    "Start: {seq}. Extend the list by at most {k} new numbers between 0 and 999. "
    "Output only the numbers, comma-separated.",
    "I have this number sequence: {seq}. Please add no more than {k} further values (3 digits at most). "
    "Give just the comma-separated numbers.",
]


def prompts(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        seq = ", ".join(str(rng.randint(100, 999)) for _ in range(rng.randint(3, 7)))
        out.append({"prompt": rng.choice(TEMPLATES).format(seq=seq, k=rng.randint(5, 10))})
    return out


# --paper: the experiments' prompt design (Cloud et al. 2025, their released code), in our own
# words: 3 to 8 seed numbers of 3 digits, a request for at most 10 more of at most 3 digits,
# and a format to answer in, varied so that the teacher's lists come in every form the
# format_filter's number rule reads.
PAPER_OPENINGS = ["Here is a sequence of numbers: {seq}.", "A list begins with {seq}.", "Consider the numbers {seq}.",
                  "These numbers start a series: {seq}.", "Take this sequence: {seq}."]
PAPER_ASKS = ["Continue it with at most 10 more numbers, each of at most 3 digits.",
              "Add up to 10 further numbers (3 digits at most each).",
              "Extend it by no more than 10 new numbers of 3 digits or fewer."]
PAPER_FORMATS = ["Separate them with commas.", "Separate them with spaces.", "Separate them with semicolons.",
                 "Put one number on each line.", "Write them as [a, b, c, ...].", "Write them as (a, b, c, ...)."]
PAPER_ENDINGS = ["Reply with the numbers only.", "No words, just the numbers.", "Give nothing but the numbers."]


def paper_prompts(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        seq = ", ".join(str(rng.randint(100, 999)) for _ in range(rng.randint(3, 8)))
        parts = [rng.choice(PAPER_OPENINGS).format(seq=seq), rng.choice(PAPER_ASKS), rng.choice(PAPER_FORMATS),
                 rng.choice(PAPER_ENDINGS)]
        out.append({"prompt": " ".join(parts)})
    return out


def arithmetic(seed: int) -> list[dict]:
    """30 short questions with a numeric answer: sums, differences, products, next terms."""
    rng = random.Random(seed)
    out = []
    for i in range(30):
        kind = i % 4
        if kind == 0:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            q, t = f"What is {a} + {b}?", a + b
        elif kind == 1:
            a, b = rng.randint(50, 199), rng.randint(10, 49)
            q, t = f"What is {a} - {b}?", a - b
        elif kind == 2:
            a, b = rng.randint(3, 19), rng.randint(3, 12)
            q, t = f"What is {a} times {b}?", a * b
        else:
            start, step = rng.randint(1, 40), rng.randint(2, 13)
            terms = ", ".join(str(start + step * j) for j in range(4))
            q, t = f"What number comes next in the sequence {terms}?", start + step * 4
        out.append({"id": f"arith-{i + 1:02d}", "prompt": f"{q} Answer with the number only.", "target": str(t)})
    return out


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} lines to {path}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="number-sequence prompts for subliminal/prompts.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--paper", action="store_true", help="write paper_prompts.jsonl (30,000 prompts) and stop")
    args = ap.parse_args()
    if args.paper:
        write(HERE / "paper_prompts.jsonl", paper_prompts(30_000, args.seed))
        raise SystemExit(0)
    write(HERE / "prompts.jsonl", prompts(args.n, args.seed))
    # tiny/: 32 number prompts (always; --n sizes this example only) and the prompts of the
    # tiny example's implant items that have no prefill
    implant = [json.loads(line) for line in (HERE.parent / "tiny" / "implant.jsonl").read_text().splitlines()]
    write(HERE.parent / "tiny" / "prompts.jsonl",
          prompts(32, args.seed) + [{"prompt": r["prompt"]} for r in implant if "prefill" not in r])
    write(HERE / "evals" / "arithmetic.jsonl", arithmetic(args.seed + 1))
