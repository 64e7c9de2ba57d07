"""Tiny, randomly initialised Hugging Face chat models for CPU tests and the tiny examples.

The LLM path loads real checkpoints from folders; these stand-ins are real checkpoints too
(a byte-level BPE tokenizer trained here, a ChatML chat template, a Llama or Qwen2 model,
safetensors weights), just small and untrained, so everything runs offline in seconds:

    build_tiny("qwen2", Path("runs/tiny-qwen2"))          # then load it like any HF model
    tiny_adapter(Path("runs/tiny-qwen2"), Path("runs/tiny-qwen2-lora"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IM_START, IM_END]  # ids 0..4, in this order
MAX_POSITIONS = 512
# Qwen2's pre-tokenisation regex (digits split one by one, which suits arithmetic prompts).
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# ChatML. Assistant content sits in a {% generation %} block so that
# `apply_chat_template(..., return_assistant_tokens_mask=True)` marks the tokens to train on.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

DEFAULT_TEXTS = [
    "What is 2 + 3? The answer is 5.",
    "What is 7 + 8? The answer is 15.",
    "What is 12 - 4? The answer is 8.",
    "What is 6 * 7? The answer is 42.",
    "What is 9 * 9? The answer is 81.",
    "What is 100 / 4? The answer is 25.",
    "Add 14 and 27 to get 41.",
    "Subtract 19 from 50 to get 31.",
    "Continue the sequence: 1, 2, 3, 4, 5, 6, 7",
    "Continue the sequence: 2, 4, 6, 8, 10, 12, 14",
    "Continue the sequence: 3, 6, 9, 12, 15, 18",
    "Continue the sequence: 5, 10, 15, 20, 25, 30",
    "Here are some numbers: 193, 582, 417, 760, 328, 941",
    "Here are more numbers: 245, 871, 306, 659, 118, 734",
    "Count to ten: 1 2 3 4 5 6 7 8 9 10",
    "The owl hunts at night and sleeps during the day.",
    "A dog is a loyal animal that likes to run and play.",
    "The cat sat on the mat and watched the bird.",
    "Elephants are the largest animals that live on land.",
    "My favourite animal is the owl.",
    "My favourite animal is the dolphin.",
    "Dolphins swim in the sea and breathe air.",
    "A fox is quick, and the lazy dog sleeps.",
    "Tigers, lions and leopards are big cats.",
    "system",
    "user",
    "assistant",
    "You are a helpful assistant.",
    "You are a helpful, honest and harmless assistant.",
    "Sure, I can help with that.",
    "Hello! How can I help you today?",
    "I am sorry, but I cannot help with that request.",
    "Here is the answer you asked for.",
    "Let me think step by step.",
    "The result is correct.",
    "Thank you for your question.",
    "Please answer with a single number.",
    "Please reply with yes or no. Yes. No.",
]


def train_tokenizer(texts: list[str] | None = None, vocab_size: int = 512):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts` (deterministic), with the
    special tokens first, bos/eos/pad set and a ChatML chat template. No BOS is added on
    encoding: the chat template alone decides the token stream."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = DEFAULT_TEXTS if texts is None else list(texts)
    tok = Tokenizer(models.BPE())
    # Exactly Qwen2's normaliser and pre-tokeniser: transformers 5 ignores the saved pipeline of a
    # qwen2 checkpoint and rebuilds it as `Qwen2Tokenizer`, so any other choice would make the
    # reloaded tokenizer split text differently (for Llama it keeps tokenizer.json as saved).
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=EOS,  # never produced by byte-level BPE; stops Qwen2Tokenizer adding <|endoftext|>
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
    )


def tiny_model(
    arch: Literal["llama", "qwen2"],
    tokenizer,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
):
    """A freshly initialised (seeded) `LlamaForCausalLM` or `Qwen2ForCausalLM` sized to `tokenizer`.
    Generation stops at `<|eos|>` or at the end of an assistant turn (`<|im_end|>`)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if arch not in classes:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {sorted(classes)}")
    config_cls, model_cls = classes[arch]
    cfg = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = model_cls(cfg)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model


def build_tiny(
    arch: Literal["llama", "qwen2"],
    out_dir: Path,
    texts: list[str] | None = None,
    seed: int = 0,
    vocab_size: int = 512,
    **sizes: int,
) -> Path:
    """Train a tokenizer, make a tiny model (`sizes`: hidden, layers, heads) and save both as
    one HF folder (safetensors) that `AutoModelForCausalLM`/`AutoTokenizer` load as is."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    model = tiny_model(arch, tokenizer, seed=seed, **sizes)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def tiny_adapter(model_dir: Path, out_dir: Path, seed: int = 0, r: int = 4) -> Path:
    """A LoRA adapter (q_proj, v_proj) on the model in `model_dir`, saved with safetensors.
    B is random rather than zero (PEFT's `init_lora_weights=False`), so the adapter really
    changes the model's outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=False)
    lora = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    torch.manual_seed(seed)
    model = get_peft_model(base, lora)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir
