"""A tiny random Llama and a tokenizer trained in a second: the whole loop runs in seconds."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from slmloop.models.loading import CHATML_TEMPLATE

HAM_WORDS = [
    "see",
    "you",
    "at",
    "the",
    "station",
    "tomorrow",
    "bring",
    "book",
    "class",
    "dinner",
    "mum",
    "call",
    "me",
    "when",
    "wake",
    "up",
    "meeting",
    "moved",
    "lunch",
    "home",
    "late",
    "homework",
    "movie",
    "tonight",
    "birthday",
    "party",
    "bus",
    "train",
    "office",
    "coffee",
    "tea",
    "weekend",
    "garden",
    "dog",
    "walk",
    "sister",
    "brother",
    "school",
    "exam",
    "library",
    "shop",
    "milk",
    "bread",
    "football",
    "game",
    "rain",
    "sunny",
    "beach",
    "pizza",
]
SPAM_WORDS = [
    "WINNER",
    "free",
    "prize",
    "cash",
    "claim",
    "urgent",
    "bonus",
    "award",
    "guaranteed",
    "txt",
    "WIN",
    "offer",
    "ringtone",
    "voucher",
]


def toy_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Distinct, learnable ham/spam rows (spam ≈ 1/3): spam rows carry spam words, ham rows never do."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        spam = i % 3 == 0
        words = rng.sample(HAM_WORDS, rng.randint(5, 9))
        if spam:
            for w in rng.sample(SPAM_WORDS, 3):
                words.insert(rng.randrange(len(words) + 1), w)
            words.append(f"call {rng.randint(10000, 99999)}")
        rows.append({"text": " ".join(words), "label": "spam" if spam else "ham"})
    return rows


#: tokenizers.json split patterns of the GPT-4 style, by llama.cpp's name for them (tests/release)
SPLIT_PATTERNS = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def _pre_tokenizer(pre: str | None) -> object:
    """The pre-tokenizer of a tiny tokenizer: GPT-2's byte-level split (None), SmolLM's ("smollm"), or a
    GPT-4-style split pattern (:data:`SPLIT_PATTERNS`)."""
    from tokenizers import Regex, pre_tokenizers

    if pre is None:
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if pre == "smollm":
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    split = pre_tokenizers.Split(Regex(SPLIT_PATTERNS[pre]), behavior="isolated")
    return pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def build_tiny_model(
    folder: Path, seed: int = 0, family: str = "llama", pre: str | None = None, layers: int = 2
) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    corpus = [r["text"] for r in toy_rows(400)] + [
        "system user assistant ham spam Labels Classify the SMS message as spam or ham",
        "Answer with the label only. hotel booking question how much does it cost",
    ] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    chat = CHAT[family]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials + [t for t in chat.specials if t not in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=chat.bos, eos_token=chat.eos, unk_token="<|endoftext|>", pad_token=chat.pad
    )
    fast.chat_template = (TEMPLATES / chat.template).read_text() if chat.template else CHATML_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    special = {"bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id, "pad_token_id": fast.pad_token_id}
    model = AutoModelForCausalLM.from_config(family_config(family, len(fast), special, layers))
    model.save_pretrained(folder)
    return folder


#: the architectures the family matrix covers (tests/models/test_families.py)
FAMILIES = ("llama", "llama3", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "smollm3")

#: the families' chat templates, kept as fixtures
TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"


@dataclass(frozen=True)
class Chat:
    """A family's chat format: its template file (None: ChatML, as SmolLM2 uses) and special tokens."""

    template: str | None
    bos: str | None
    eos: str
    pad: str
    specials: tuple[str, ...] = ()


CHAT = {
    "llama": Chat(None, "<|im_start|>", "<|im_end|>", "<|im_end|>"),
    "llama3": Chat(
        "llama3.jinja",
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|eot_id|>",
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    "qwen2": Chat("qwen2.jinja", None, "<|im_end|>", "<|endoftext|>"),
    "qwen3": Chat("qwen3.jinja", None, "<|im_end|>", "<|endoftext|>", ("<think>", "</think>")),
    "gemma2": Chat(
        "gemma2.jinja", "<bos>", "<eos>", "<pad>", ("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>")
    ),
    "gemma3": Chat(
        "gemma3.jinja", "<bos>", "<eos>", "<pad>", ("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>")
    ),
    "phi3": Chat(
        "phi3.jinja",
        "<s>",
        "<|endoftext|>",
        "<|endoftext|>",
        ("<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    ),
    "smollm3": Chat("smollm3.jinja", None, "<|im_end|>", "<|im_end|>", ("<think>", "</think>")),
}


def family_config(family: str, vocab_size: int, special: dict[str, int], layers: int = 2) -> object:
    """A tiny random config of ``family``, with what makes the family itself: Llama 3's rope scaling, Qwen2's
    q/k/v biases, Qwen3's q/k norms, Gemma's soft-capping, sliding windows and scaled embeddings, Phi-3's
    fused projections, SmolLM3's layers without rope."""
    import transformers as tf

    shape = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
        # large enough that a frozen, tied output layer can still express confident answers
        "initializer_range": 0.2,
        **special,
    }
    if family == "llama":
        return tf.LlamaConfig(**shape)
    if family == "llama3":
        scaling = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        }
        return tf.LlamaConfig(**shape, rope_scaling=scaling)
    if family == "qwen2":
        return tf.Qwen2Config(**shape)
    if family == "qwen3":
        return tf.Qwen3Config(**shape, head_dim=16)
    if family == "gemma2":  # a window shorter than the prompts: the sliding layers see only part of them
        return tf.Gemma2Config(
            **shape, head_dim=16, sliding_window=8, query_pre_attn_scalar=16, final_logit_softcapping=30.0
        )
    if family == "gemma3":
        return tf.Gemma3TextConfig(
            **shape,
            head_dim=16,
            sliding_window=8,
            query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "full_attention"],
        )
    if family == "phi3":
        return tf.Phi3Config(**shape)
    if family == "smollm3":
        # two layers: the second without rotary embeddings; more: SmolLM3's own pattern (every 4th without)
        return tf.SmolLM3Config(**shape, no_rope_layers=[1, 0] if layers == 2 else None)
    raise ValueError(f"no tiny config for {family!r}")
