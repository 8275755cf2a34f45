"""A tiny random Llama and a tokenizer trained in a second: the whole loop runs in seconds."""

from __future__ import annotations

import random
from pathlib import Path

from slmloop.models.loading import CHATML_TEMPLATE

HAM = [
    "see you at the station at {n}",
    "can you bring the book tomorrow",
    "ok lar i am home now",
    "dinner at {n} with mum",
    "call me when you wake up",
    "the meeting moved to {n}",
    "happy birthday have a great day",
    "i will be late for class",
    "did you finish the homework",
    "lets watch a movie tonight",
]
SPAM = [
    "WINNER you won a free prize call {n} now",
    "free entry win cash text WIN to {n}",
    "urgent your mobile won a bonus claim {n}",
    "congratulations claim your free holiday call {n}",
    "you have won a guaranteed cash award txt {n}",
]


def toy_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Distinct, learnable ham/spam rows (spam ≈ 1/3)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        spam = i % 3 == 0
        text = rng.choice(SPAM if spam else HAM).format(n=rng.randint(100, 99999)) + f" {i}"
        rows.append({"text": text, "label": "spam" if spam else "ham"})
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
