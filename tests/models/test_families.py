"""The family matrix: answers and training are exact on every architecture users pick.

One tiny random model per family (tests/tiny.py: Llama with and without Llama 3's rope scaling,
Qwen2, Qwen3, Gemma 2 and 3, Phi-3, SmolLM3). On each, slmloop's answering and training give what
plain transformers gives: label ranking, greedy decoding, training with the prompt prefix shared
across the batch. Gemma's sliding windows (shorter than the prompts here) and soft-capping are not
reproduced by the fast paths (packed passes, label rounds, kept frozen-layer states), so Gemma runs
through transformers' own masks instead, and the user is told.
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

#: families whose attention the fast paths do not reproduce: answered and trained on the plain paths
PLAIN = ("gemma2", "gemma3")

TASK = TaskConfig(type="classification", instruction="Classify the SMS message as spam or ham.", labels=["ham", "spam"])


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return request.param, build_tiny_model(tmp_path_factory.mktemp(request.param), family=request.param)


def _load(folder: Path, **kwargs: str):
    ref = ResolvedModel("tiny", str(folder), "local")
    return load_causal_lm(ref, torch.float32, **kwargs), load_tokenizer(ref)


def _greedy(model, tok, prompt: str, max_new_tokens: int) -> list[int]:
    """transformers' own greedy continuation of ``prompt``: the new token ids."""
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


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
        ref = _greedy(model, tok, prompt, 8)
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
    examples = encode_rows(tok, TASK, toy_rows(6), 256, "full")
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


@pytest.mark.parametrize("name", PLAIN)
def test_a_family_the_fast_paths_do_not_reproduce_runs_on_the_plain_paths_with_a_note(
    name: str,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from slmloop.models.attention import plain_paths
    from slmloop.models.inference import start_batch

    folder = build_tiny_model(tmp_path_factory.mktemp(name), family=name)
    model, tok = _load(folder)
    note = capsys.readouterr().err
    arch = {"gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}[name]
    assert f"tiny ({arch}) uses sliding-window attention" in note and "plain attention" in note
    assert plain_paths(model) and not plain_paths(_load(build_tiny_model(folder.parent / "llama"))[0])
    prompts = [render_prompt(tok, prompt_messages(TASK, r)) for r in toy_rows(3)]
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    with pytest.raises(ValueError, match="no shared prefix"):
        start_batch(model, [e[8:] for e in encoded], [(torch.zeros(1), torch.zeros(1))], 8)
    # the fast paths would be wrong here (their masks let the sliding layers see the whole prompt, or do not
    # fit the window's cache at all): forced onto them, label ranking leaves the model's own scores or fails
    monkeypatch.setattr("slmloop.models.attention.plain_paths", lambda model: False)
    naive = [[_naive_label_logp(model, tok, p, lab) for lab in LABELS] for p in prompts]
    try:
        fast = rank_labels(model, tok, prompts, LABELS, batch_size=3, margin=None)
    except RuntimeError:
        return
    assert max(abs(f - n) for fr, nr in zip(fast, naive, strict=True) for f, n in zip(fr, nr, strict=True)) > 1e-2


def test_the_recipe_trains_each_family_exactly(family, tmp_path: Path) -> None:
    """The recipe on each family: kept states of the frozen layer give the whole model's loss and adapter
    gradients (a shared prompt prefix included), and a short run learns."""
    from slmloop.project import open_project
    from slmloop.train.recipe import build, setup, train
    from tests.train.test_recipe import answer_loss_and_grads

    name, folder = family
    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from tests.conftest import write_project

    # room for Llama 3's and SmolLM3's system blocks: no prompt is cut, so every row shares the prefix
    root = write_project(
        tmp_path / "p",
        folder,
        toy_rows(160),
        model={"max_length": 160},
        train={"batch_size": 8, "lora_layers": 1, "epochs": 2},
    )
    p = open_project(root)
    import_source(p, p.manifest.data.sources[0])
    prepare_dataset(p)
    p.close()
    p = open_project(root)
    parts = build(setup(p))
    frozen = parts.inner_loss.frozen
    if name in PLAIN:  # kept states would need the sliding layers' own masks: the whole model runs every step
        assert frozen is None, name
        p.close()
        p = open_project(root)
        run = train(p)
        assert run.metrics["train_loss_last"] < run.metrics["train_loss_first"], name
        p.close()
        return
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


def test_each_family_is_served(family) -> None:
    """The server answers with each family: a label with the model's own probabilities, and a chat reply
    that is the model's greedy continuation."""
    import math

    from fastapi.testclient import TestClient

    from slmloop.predict.answers import MIN_PROB
    from slmloop.predict.engines import LocalEngine
    from slmloop.serve.app import create_app
    from slmloop.serve.engine import Predictor

    name, folder = family
    model, tok = _load(folder)
    predictor = Predictor(LocalEngine(model, tok), task=TASK, name=name, rank_margin=None)
    text = toy_rows(1)[0]["text"]
    messages = [{"role": "user", "content": "see you at the station tomorrow"}]
    with TestClient(create_app(predictor, None)) as client:
        label = client.post("/v1/predict", json={"text": text})
        chat = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6})
    assert label.status_code == 200 and chat.status_code == 200, name
    prompt = render_prompt(tok, prompt_messages(TASK, {"text": text, "input": text}))
    logp = [_naive_label_logp(model, tok, prompt, lab) for lab in TASK.labels]
    total = math.log(sum(math.exp(v) for v in logp))
    want = {lab: math.exp(v - total) for lab, v in zip(TASK.labels, logp, strict=True)}
    said = label.json()["scores"]  # the labels above MIN_PROB
    assert said == pytest.approx({lab: p for lab, p in want.items() if p >= MIN_PROB}, abs=1e-4), name
    assert label.json()["label"] == max(want, key=want.__getitem__), name
    ref = _greedy(model, tok, render_prompt(tok, messages), 6)
    reply = chat.json()["choices"][0]["message"]["content"]
    assert reply == tok.decode(ref, skip_special_tokens=True).strip(), name


def test_each_family_answers_right_after_its_prompt_and_ends_where_its_template_ends_a_turn(family) -> None:
    """Training, ranking and decoding agree on every template: the answer follows the rendered prompt at once
    (Qwen3's and SmolLM3's empty thinking block belongs to the prompt) and ends with the token the template
    closes a turn with (Gemma's <end_of_turn>, Phi-3's <|end|>, Llama 3's <|eot_id|>), in full and compact
    prompts."""
    from slmloop.models.loading import chat_text, encode_example

    name, folder = family
    _, tok = _load(folder)
    probe = chat_text(
        tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "spam"}], add_generation_prompt=False
    )
    assert probe.split("spam", 1)[1].startswith(tok.eos_token), name  # the turn end is the EOS answers end with
    for style in ("full", "compact"):
        messages = prompt_messages(TASK, toy_rows(1)[0], style)
        prompt = render_prompt(tok, messages)
        ex = encode_example(tok, messages, "spam", 256)
        assert ex.input_ids[: ex.prompt_len] == tok(prompt, add_special_tokens=False)["input_ids"], (name, style)
        # exactly the sequence label ranking scores: the label's tokens, then EOS
        assert ex.input_ids[ex.prompt_len :] == [*tok("spam", add_special_tokens=False)["input_ids"], tok.eos_token_id]
        assert "Classify the SMS message" in prompt, (name, style)


def test_template_quirks_are_met(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Gemma 2 refuses a system message and two user turns in a row: they are folded as Gemma 3's own template
    folds them; Llama 3's date is fixed, so a prompt does not change from one day to the next; a conversation
    no folding makes acceptable is refused with a reason."""
    from slmloop.errors import ModelError
    from slmloop.models.loading import chat_text, encode_conversation

    folders = {f: build_tiny_model(tmp_path_factory.mktemp(f), family=f) for f in ("gemma2", "gemma3", "llama3")}
    gemma2, gemma3, llama3 = (_load(folders[f])[1] for f in ("gemma2", "gemma3", "llama3"))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
        {"role": "user", "content": "are you there"},
        {"role": "assistant", "content": "yes"},
    ]
    text = chat_text(gemma2, messages, add_generation_prompt=False)
    first = "<bos><start_of_turn>user\nBe brief.\n\nhello\n\nare you there<end_of_turn>\n"
    assert text == first + "<start_of_turn>model\nyes<end_of_turn>\n"
    ex = encode_conversation(gemma2, messages, 256)
    assert gemma2.decode(ex.input_ids[ex.spans[0][0] : ex.spans[0][1]]) == "yes<end_of_turn>"
    # Gemma 3 takes the system message itself, the same way
    assert chat_text(gemma3, messages[:2], add_generation_prompt=True) == chat_text(
        gemma2, messages[:2], add_generation_prompt=True
    )
    assert "Today Date: 26 Jul 2024" in chat_text(llama3, messages[:2], add_generation_prompt=True)
    with pytest.raises(ModelError, match="refuses the conversation"):
        chat_text(gemma2, [{"role": "assistant", "content": "first"}], add_generation_prompt=True)


def test_lora_targets_mean_the_same_on_each_family(family) -> None:
    """`target_modules: all-linear` is every linear layer of the blocks and `auto` the attention projections,
    whatever the family names them (Phi-3's fused qkv_proj and gate_up_proj)."""
    from slmloop.train.recipe import _target_modules

    name, folder = family
    model, _ = _load(folder)
    fused = name == "phi3"
    attention = {"qkv_proj", "o_proj"} if fused else {"q_proj", "k_proj", "v_proj", "o_proj"}
    mlp = {"gate_up_proj", "down_proj"} if fused else {"gate_proj", "up_proj", "down_proj"}
    assert set(_target_modules(model, "all-linear")) == attention | mlp, name
    assert set(_target_modules(model, "auto")) == attention, name
