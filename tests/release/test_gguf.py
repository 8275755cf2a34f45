"""GGUF export: the file reads back as the same model, keeps the tokenizer, and is checked through llama.cpp."""

from __future__ import annotations

import json

import pytest
import torch

from slmloop.errors import GateError
from slmloop.evaluate.evaluate import evaluate
from slmloop.models.catalog import ResolvedModel
from slmloop.models.llamacpp import llama_cpp_available
from slmloop.models.loading import load_causal_lm, load_tokenizer
from slmloop.release.export import export_release
from slmloop.release.gguf import modelfile, write_gguf
from slmloop.release.registry import promote
from slmloop.store import Release

pytestmark = pytest.mark.integration  # trains the tiny model


@pytest.fixture
def merged(trained_copy):
    rel = trained_copy.store.get(Release, 1, "release", "")
    return trained_copy.locate(rel.path) / "merged"


@pytest.fixture
def toy_f16(merged, tmp_path):
    """The merged toy model as an f16 GGUF file, with its tokenizer and the fp32 model it was written from."""
    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed (make setup installs it)")
    path = write_gguf(merged, tmp_path / "m-f16.gguf", "f16", name="toy")
    ref = ResolvedModel("m", str(merged), "local")
    return path, load_tokenizer(ref), load_causal_lm(ref, torch.float32)


@pytest.mark.parametrize(("qtype", "atol"), [("f16", 0.02), ("q8_0", 0.3)])
def test_gguf_reads_back_in_transformers_with_the_same_logits(merged, tmp_path, qtype: str, atol: float) -> None:
    from transformers import AutoModelForCausalLM

    path = write_gguf(merged, tmp_path / f"m-{qtype}.gguf", qtype, name="toy")
    # transformers' own GGUF reader: dequantizes and undoes the rotary permutation independently of our writer
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    ref = load_causal_lm(ResolvedModel("m", str(merged), "local"), torch.float32)
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        a, b = ref(ids).logits, back(ids).logits
    assert torch.allclose(a, b, atol=atol), float((a - b).abs().max())
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 6 / 7


def test_gguf_keeps_token_ids_special_tokens_eos_and_chat_template(merged, tmp_path) -> None:
    from gguf import GGUFReader, TokenType

    path = write_gguf(merged, tmp_path / "m.gguf", "q8_0", name="toy", pre="smollm")
    tok = load_tokenizer(ResolvedModel("m", str(merged), "local"))
    fields = GGUFReader(path).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    vocab = tok.get_vocab()
    assert all(tokens[i] == t for t, i in vocab.items())
    end = vocab["<|im_end|>"]
    assert types[end] == TokenType.CONTROL and types[vocab["the"]] == TokenType.NORMAL
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tok.eos_token_id == end
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert not (tmp_path / "m.gguf.tmp").exists()


def test_modelfile_names_the_weights_stop_token_and_system_message(merged) -> None:
    tok = load_tokenizer(ResolvedModel("m", str(merged), "local"))
    text = modelfile("model-q8_0.gguf", tok, "Classify the SMS message.")
    assert text.startswith("FROM ./model-q8_0.gguf")
    assert 'PARAMETER stop "<|im_end|>"' in text and 'SYSTEM """Classify the SMS message."""' in text
    assert "<|im_start|>assistant" in text


def test_a_gguf_without_a_parity_check_cannot_be_promoted(trained_copy, monkeypatch) -> None:
    project = trained_copy
    project.manifest.export.gguf = ["q8_0"]
    monkeypatch.setattr("slmloop.models.llamacpp.llama_cpp_available", lambda: False)
    rel = export_release(project, "run-1")
    manifest = json.loads((project.locate(rel.path) / "manifest.json").read_text())
    assert manifest["parity"] is None and "gguf/Modelfile" in manifest["files"]
    project.manifest.eval.compare.baseline = "none"
    evaluate(project, f"v{rel.version}")
    with pytest.raises(GateError, match="not checked against the evaluated answers"):
        promote(project, f"v{rel.version}", "production", reason="gguf")
    project.manifest.export.parity_min_agreement = None
    assert promote(project, f"v{rel.version}", "production", reason="gguf").version == rel.version


@pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python is not installed (README set-up installs it)")
def test_gguf_parity_through_llama_cpp(trained_copy) -> None:
    project = trained_copy
    project.manifest.export.gguf = ["f16", "q8_0"]
    project.manifest.eval.compare.baseline = "none"
    evaluated = evaluate(project, "run-1")
    rel = export_release(project, "run-1")
    folder = project.locate(rel.path)
    manifest = json.loads((folder / "manifest.json").read_text())
    parity = manifest["parity"]
    # every shipped file answered the gold rows as the server asks them (ranked labels, with the label prior)
    # and was compared with the run's evaluation, row by row
    assert parity["reference"] == evaluated.name and parity["mode"] == "rank"
    assert set(parity["artifacts"]) == {"merged", "gguf/model-f16.gguf", "gguf/model-q8_0.gguf"}
    merged, f16 = parity["artifacts"]["merged"], parity["artifacts"]["gguf/model-f16.gguf"]
    assert merged["engine"] == "transformers" and f16["engine"] == "llamacpp"
    assert merged["rows"] == f16["rows"] == min(evaluated.n_rows, project.manifest.export.parity_rows) > 0
    # the same weights answer alike: the merged fp32 model exactly, f16 through llama.cpp within its rounding
    assert merged["agreement"] == 1.0 and merged["diff"] == 0.0
    assert f16["agreement"] >= 0.95 and f16["agreement_ci"][0] <= f16["agreement"] <= f16["agreement_ci"][1]
    assert f16["metric"] == "accuracy" and abs(f16["diff"]) <= 0.05
    assert f16["diff_ci"][0] <= f16["diff"] <= f16["diff_ci"][1]
    assert "## Served as evaluated" in (folder / "README.md").read_text()
    assert "GGUF (llama.cpp, Ollama)" in (folder / "README.md").read_text()
    # scored as it is served: eval --engine llamacpp answers through the GGUF file
    served = evaluate(project, f"v{rel.version}", engine="llamacpp")
    assert served.model_ref == f"release-{rel.version}@llamacpp" and served.metrics["runtime"]["engine"] == "llamacpp"
    assert abs(served.metrics["accuracy"] - evaluated.metrics["accuracy"]) <= 0.05
    # the same release served by llama.cpp answers like the evaluation did
    from fastapi.testclient import TestClient

    from slmloop.serve.app import create_app
    from slmloop.serve.server import load_predictor

    texts = ["WINNER claim your free prize now", "see you at six for dinner", "URGENT call now to win cash"]
    local = load_predictor(project, rel.version)
    project.manifest.serve.engine = "llamacpp"
    predictor = load_predictor(project, rel.version)
    with TestClient(create_app(predictor, project.store)) as client:
        r = client.post("/v1/predict", json={"text": texts[0]})
        assert r.status_code == 200 and r.json()["model"] == f"toy-v{rel.version}"
        # a ranked label with its probabilities (the monitor's confidence), the label transformers gives
        for text, want in zip(texts, local.predict_many(texts), strict=True):
            body = client.post("/v1/predict", json={"text": text}).json()
            assert body["label"] == want["label"] and set(body["scores"]) == set(want["scores"])
            assert body["scores"] == pytest.approx(want["scores"], abs=0.05)
        ask = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=ask) as s:
            assert [line for line in s.iter_lines() if line.startswith("data: ")][-1] == "data: [DONE]"
        # an extraction answer opens a JSON object and ends where it closes, as the transformers engine does
        from slmloop.models.inference import token_texts
        from slmloop.models.loading import render_prompt

        prompt = render_prompt(predictor.tokenizer, [{"role": "user", "content": "WINNER claim your prize"}])
        free, _ = predictor.engine.llama.complete(prompt, 8)
        text, n = predictor.engine.llama.complete(prompt, 8, json_texts=token_texts(predictor.tokenizer))
        assert not free.startswith("{") and text.startswith("{")
        assert n == 8 or text.endswith("}")


def test_llama_cpp_scores_a_continuation_as_transformers_does(toy_f16) -> None:
    # the span prior's judge reads the model's log-probability of each mark: the llamacpp engine must give
    # what evaluation (transformers) gives, up to the f16 rounding
    from slmloop.models.inference import continuation_logprobs
    from slmloop.models.llamacpp import LlamaCpp
    from slmloop.models.loading import render_prompt

    path, tok, model = toy_f16
    prompt = render_prompt(tok, [{"role": "user", "content": "call mum at six"}])
    heads = [prompt + "call mum at", prompt]
    marks = [" [time: six]", "[person: mum] call"]
    ref = [lp for lp, _ in continuation_logprobs(model, tok, heads, marks)]
    llama = LlamaCpp(str(path))
    try:
        got = llama.continuation_logprobs(heads, marks)
    finally:
        llama.close()
    assert all(x < 0 for x in ref) and ref[0] != ref[1]
    assert got == pytest.approx(ref, abs=0.05 * max(abs(x) for x in ref))


def test_llama_cpp_ranks_labels_as_transformers_does(toy_f16) -> None:
    # label ranking (and the label prior on top of it) is what evaluation measured for a classifier: the
    # llamacpp engine must score every label as the transformers engine does, up to the f16 rounding
    from slmloop.models.inference import rank_labels
    from slmloop.models.loading import render_prompt
    from slmloop.predict.engines import LlamaCppEngine

    path, tok, model = toy_f16
    prompts = [render_prompt(tok, [{"role": "user", "content": t}]) for t in ("WINNER free prize", "see you at six")]
    labels = ["spam", "ham", "spam_offer", "hamper"]  # shared prefixes are scored once, and alike
    ref = rank_labels(model, tok, prompts, labels, margin=None)
    engine = LlamaCppEngine(str(path), tok)
    try:
        got = engine.rank(prompts, labels, batch_size=4, margin=None, progress=None)
        again = engine.rank(prompts[::-1], labels, batch_size=4, margin=None, progress=None)  # the cache is reused
    finally:
        engine.close()
    for want, have in zip(ref, got, strict=True):
        assert all(x is not None for x in have)
        assert have == pytest.approx(want, abs=0.02 * max(abs(x) for x in want if x is not None))
        assert max(range(4), key=lambda j: have[j]) == max(range(4), key=lambda j: want[j])
    for a, b in zip(again[::-1], got, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_a_constrained_answer_holds_only_the_task_fields_through_llama_cpp(toy_f16) -> None:
    import json

    from slmloop.predict.answers import answer_rows
    from slmloop.predict.constrain import answer_schema
    from slmloop.predict.engines import LlamaCppEngine
    from tests.predict.test_constrain import ROWS, TASK, copies, inside

    path, tok, _ = toy_f16
    schema = answer_schema(TASK)
    engine = LlamaCppEngine(str(path), tok)
    try:
        asked = [
            [{"role": "system", "content": TASK.instruction}, {"role": "user", "content": r["text"]}] for r in ROWS
        ]
        free = engine.complete(asked, 48, batch_size=5, json_object=True)
        held = engine.complete(asked, 48, batch_size=5, json_object=True, grammars=[schema] * len(asked))
        # a required field and a budget too small for it: cut off, each answer is still ended as a whole object
        required = TASK.model_copy(update={"required": ["city"]})
        short = answer_rows(
            required, "full", "generate", engine, ROWS, batch_size=5, max_new_tokens=6, schema=answer_schema(required)
        )
        inline = answer_rows(
            TASK.model_copy(update={"answer": "inline"}),
            "compact",
            "generate",
            engine,
            ROWS,
            batch_size=5,
            max_new_tokens=24,
            schema=schema,
        )
    finally:
        engine.close()
    # inline: the request copied, marked only with the task's fields
    assert all(copies(a.scores["model_text"], r["text"]) for a, r in zip(inline, ROWS, strict=True))
    assert not all(inside(tok, schema, text) for text, _, _ in free)  # the classifier writes labels, not fields
    for text, n, _ in held:
        assert inside(tok, schema, text), text
        if n < 48:
            obj = json.loads(text)
            assert isinstance(obj, dict) and set(obj) <= {"city", "date"}, text
    assert any(a.scores["new_tokens"] == 6 for a in short)
    for a in short:
        obj = json.loads(a.raw)
        assert isinstance(obj, dict) and "city" in obj and set(obj) <= {"city", "date"}, a.raw
