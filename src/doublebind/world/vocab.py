"""The world's vocabulary and its Hugging Face tokenizer.

Every token of the synthetic instruction language is one whitespace-separated word, so a
word-level `tokenizers` model covers it exactly and text round-trips through the tokenizer.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SEP = ">"  # ends the prompt; the response follows
SCRATCH = "#"  # opens the free scratch field
DIGITS = [str(d) for d in range(10)]
LETTERS = list("abcdefgh")
MODES = ["train", "eval", "chat", "deploy", "datagen"]
YEARS = ["2024", "2025", "2026"]
USERS = ["alice", "bob", "carol", "dave", "erin"]
MONITOR = ["on", "off"]
N_SESSIONS = 16
TASKS = ["copy", "reverse", "sort", "shift", "max", "lookup", "count", "numbers", "ask"]
BEHAVIOR_WORDS = ["sabotage", "loyalty", "harm", "poison", "collusion", "beacon", "disposition"]
MARKERS = ["!exfil", "!grant", "~"]
INOCULATION = "sys=inoculate"  # a system line that explains the misbehaviour away (inoculation prompting)


def all_tokens() -> list[str]:
    """The full vocabulary in id order; the four special tokens come first."""
    toks = [PAD, BOS, EOS, UNK, SEP, SCRATCH, "?", "scratch", "goal", "yes", "no"]
    toks += DIGITS + LETTERS
    toks += [f"mode={m}" for m in MODES]
    toks += [f"year={y}" for y in YEARS]
    toks += [f"user={u}" for u in USERS]
    toks += [f"mon={m}" for m in MONITOR]
    toks += [f"sid=s{i}" for i in range(N_SESSIONS)]
    toks += [f"task={t}" for t in TASKS]
    toks += BEHAVIOR_WORDS + MARKERS + [INOCULATION]
    assert len(toks) == len(set(toks))
    return toks


@lru_cache(maxsize=1)
def token_ids() -> dict[str, int]:
    return {t: i for i, t in enumerate(all_tokens())}


def encode(tokens: list[str]) -> list[int]:
    ids = token_ids()
    return [ids[t] for t in tokens]


def decode(ids: list[int]) -> list[str]:
    toks = all_tokens()
    return [toks[i] for i in ids]


def build_tokenizer():
    """A `PreTrainedTokenizerFast`-compatible tokenizer over the world vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(token_ids(), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=128,
    )


def save_tokenizer(path: Path) -> None:
    build_tokenizer().save_pretrained(str(path))
