"""A tiny random Llama and a tokenizer trained in a second: the whole loop runs in seconds."""

from __future__ import annotations

import random
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


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    corpus = [r["text"] for r in toy_rows(400)] + [
        "system user assistant ham spam Labels Classify the SMS message as spam or ham",
        "Answer with the label only. hotel booking question how much does it cost",
    ] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
        # large enough that a frozen, tied output layer can still express confident answers
        initializer_range=0.2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder
