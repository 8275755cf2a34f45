"""The family matrix: the recipe's own machinery is exact on every architecture users pick.

One tiny random model per family (tests/tiny.py: Llama with and without Llama 3's rope scaling,
Qwen2, Qwen3, Phi-3, SmolLM3). On each, slmloop's fast paths — label ranking with the shared
prefix held apart and packed prompt passes, the shared-prefix, drop-finished-rows decoder,
training with the prompt prefix shared across the batch — give what plain transformers gives.
Gemma 2 and 3 (sliding windows, soft-capping) are not reproduced exactly yet: they are refused
with a message, never answered differently from the model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slmloop.manifest import TaskConfig
from slmloop.models.catalog import ResolvedModel
from slmloop.models.inference import generate, rank_labels
from slmloop.models.loading import load_causal_lm, load_tokenizer, render_prompt
from slmloop.predict.tasks import prompt_messages
from tests.models.test_models import LABELS, _naive_label_logp
from tests.tiny import FAMILIES, build_tiny_model, toy_rows

#: families whose attention the fast paths do not reproduce yet (refused at load)
REFUSED = ("gemma2", "gemma3")

TASK = TaskConfig(type="classification", instruction="Classify the SMS message as spam or ham.", labels=["ham", "spam"])


@pytest.fixture(scope="module", params=[f for f in FAMILIES if f not in REFUSED])
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return request.param, build_tiny_model(tmp_path_factory.mktemp(request.param), family=request.param)


def _load(folder: Path, **kwargs: str):
    ref = ResolvedModel("tiny", str(folder), "local")
    return load_causal_lm(ref, torch.float32, **kwargs), load_tokenizer(ref)


def test_label_ranking_equals_the_naive_full_softmax(family) -> None:
    name, folder = family
    model, tok = _load(folder)
    prompts = [render_prompt(tok, prompt_messages(TASK, r)) for r in toy_rows(4)]
    scores = rank_labels(model, tok, prompts, LABELS, batch_size=2, margin=None)
    for prompt, row in zip(prompts, scores, strict=True):
        for lab, got in zip(LABELS, row, strict=True):
            assert got == pytest.approx(_naive_label_logp(model, tok, prompt, lab), abs=1e-4), name


def test_generation_equals_transformers_greedy_decoding(family) -> None:
    name, folder = family
    model, tok = _load(folder)
    prompts = [render_prompt(tok, prompt_messages(TASK, r)) for r in toy_rows(5)]
    ours = generate(model, tok, prompts, max_new_tokens=8, batch_size=3)
    for prompt, (text, n) in zip(prompts, ours, strict=True):
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            ref = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=8,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )[0, ids.shape[1] :].tolist()
        assert (n, text) == (len(ref), tok.decode(ref, skip_special_tokens=True).strip()), name


def test_a_shared_prompt_prefix_gives_the_same_loss_and_gradients(family) -> None:
    from peft import LoraConfig, get_peft_model

    from slmloop.train.batching import collate, encode_rows
    from slmloop.train.recipe import AnswerLoss

    name, folder = family
    model, tok = _load(folder, attn_implementation="eager")
    model = get_peft_model(
        model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    )
    loss_fn = AnswerLoss(model)
    examples = encode_rows(tok, TASK, toy_rows(6), 64, "full")
    results = []
    for share in (False, True):
        batch = collate(examples, tok.pad_token_id, share_prefix=share)
        loss, _ = loss_fn(batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad()
        results.append((float(loss.detach()), grads, batch.prefix_len))
    assert results[0][2] == 0 and results[1][2] >= 8, name  # the system prompt is shared
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5), name
    for g0, g1 in zip(results[0][1], results[1][1], strict=True):
        assert torch.allclose(g0, g1, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("name", REFUSED)
def test_a_family_the_paths_do_not_reproduce_is_refused_with_a_reason(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from slmloop.errors import ModelError

    folder = build_tiny_model(tmp_path_factory.mktemp(name), family=name)
    with pytest.raises(ModelError) as caught:
        _load(folder)
    assert "sliding-window attention" in caught.value.message and "not reproduce exactly" in caught.value.message
    assert "Llama, Qwen2, Qwen3" in (caught.value.hint or "")


def test_the_recipe_trains_each_family_exactly(family, tmp_path: Path) -> None:
    """The recipe on each family: kept states of the frozen layer give the whole model's loss and adapter
    gradients (a shared prompt prefix included), and a short run learns."""
    from slmloop.project import open_project
    from slmloop.train.recipe import build, setup, train
    from tests.train.test_recipe import _prepared, answer_loss_and_grads

    name, folder = family
    root = _prepared(tmp_path / "p", folder, batch_size=8, lora_layers=1, epochs=2)
    p = open_project(root)
    parts = build(setup(p))
    frozen = parts.inner_loss.frozen
    assert frozen is not None and frozen.start == 1, name

    ids = [0, 1, 2, 3, 4, 5]
    full_loss, full_grads = answer_loss_and_grads(parts, ids)  # the whole model runs, keeps the frozen layer's states
    kept_loss, kept_grads = answer_loss_and_grads(parts, ids)  # starts above the frozen layer
    assert parts.batch(ids).prefix_len > 0
    assert kept_loss == pytest.approx(full_loss, rel=1e-5), name
    for param, g in full_grads.items():
        assert torch.allclose(kept_grads[param], g, rtol=1e-4, atol=1e-6), (name, param)
    p.close()
    p = open_project(root)
    run = train(p)
    assert run.metrics["train_loss_last"] < run.metrics["train_loss_first"], name
    p.close()
