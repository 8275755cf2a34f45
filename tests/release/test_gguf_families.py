"""GGUF export beyond Llama: Llama 3 (rope scaling), Qwen2, Qwen3 and SmolLM3 files score text in llama.cpp as the
Hugging Face model does, and a family GGUF cannot export yet (Phi-3, Gemma) refuses with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slmloop.errors import ModelError
from slmloop.models.catalog import ResolvedModel
from slmloop.models.inference import continuation_logprobs
from slmloop.models.llamacpp import llama_cpp_available
from slmloop.models.loading import load_causal_lm, load_tokenizer, render_prompt
from slmloop.release.gguf import write_gguf
from tests.tiny import build_tiny_model

pytestmark = pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python is not installed")


def llama_scores(path: Path, heads: list[str], tails: list[str]) -> list[float]:
    """Each tail's summed log-probability after its head, as llama.cpp scores it from the GGUF at ``path``."""
    from slmloop.models.llamacpp import LlamaCpp

    llama = LlamaCpp(str(path))
    try:
        return llama.continuation_logprobs(heads, tails)
    finally:
        llama.close()


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "smollm3"])
def test_a_family_gguf_scores_text_in_llama_cpp_as_transformers_does(family: str, tmp_path: Path) -> None:
    # SmolLM3 with four layers: its fourth has no rotary embeddings, as llama.cpp expects
    folder = build_tiny_model(tmp_path / family, family=family, layers=4 if family == "smollm3" else 2)
    ref = ResolvedModel(family, str(folder), "local")
    model, tok = load_causal_lm(ref, torch.float32), load_tokenizer(ref)
    path = write_gguf(folder, tmp_path / "m-f16.gguf", "f16", name=family)
    # prompts past Llama 3's original context (32 positions here), where its rope scaling changes the answer
    prompt = render_prompt(tok, [{"role": "user", "content": "see you at the station tomorrow, bring the book " * 3}])
    heads = [prompt, prompt + "call mum"]
    tails = ["meeting moved to lunch", " when you wake up"]
    want = [lp for lp, _ in continuation_logprobs(model, tok, heads, tails)]
    assert llama_scores(path, heads, tails) == pytest.approx(want, rel=0.02), family


@pytest.mark.parametrize("pre", [None, "smollm", "llama-bpe", "qwen2"])
def test_llama_cpp_splits_text_as_the_tokenizer_does(pre: str | None, tmp_path: Path) -> None:
    """The GGUF names the tokenizer's pre-tokenizer as llama.cpp knows it (GPT-2's, SmolLM's, Llama 3's, Qwen2's),
    so llama.cpp reads digits, spaces and line breaks into the same tokens as the model was trained on."""
    import gguf
    from llama_cpp import Llama

    from slmloop.release.gguf import pre_tokenizer_name

    folder = build_tiny_model(tmp_path / "m", pre=pre)
    assert pre_tokenizer_name(folder) == (pre or "gpt-2")
    path = write_gguf(folder, tmp_path / "m.gguf", "f16", name="m")
    assert gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents() == (pre or "gpt-2")
    tok = load_tokenizer(ResolvedModel("m", str(folder), "local"))
    text = "<|im_start|>user\ncall 12345 now!!  WINNER 2024\n\n  free prize's 7 pm<|im_end|>\n"
    llm = Llama(str(path), verbose=False, n_ctx=256)
    try:
        assert (
            llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False)["input_ids"]
        )
    finally:
        llm.close()


def test_llama3_rope_scaling_matters_to_the_gguf(tmp_path: Path) -> None:
    """Without its rope factors the Llama 3 file would score differently: the check above can fail."""
    import gguf

    from slmloop.release.gguf import llama3_rope_factors

    rope = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    factors = llama3_rope_factors(rope, 10000.0, 16)
    assert factors[0] == 1.0 and factors[-1] == 8.0 and len(factors) == 8  # fast frequencies kept, slow ones scaled
    folder = build_tiny_model(tmp_path / "llama3", family="llama3")
    path = write_gguf(folder, tmp_path / "m.gguf", "f16", name="llama3")
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert "rope_freqs.weight" in names


@pytest.mark.parametrize(
    ("family", "arch"),
    [
        ("phi3", "Phi3ForCausalLM"),
        ("gemma2", "Gemma2ForCausalLM"),
        ("gemma3", "Gemma3ForCausalLM"),
    ],
)
def test_a_family_gguf_cannot_export_is_refused_with_a_reason(family: str, arch: str, tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / family, family=family)
    with pytest.raises(ModelError) as caught:
        write_gguf(folder, tmp_path / "m.gguf", "f16", name=family)
    assert arch in caught.value.message and "Qwen2" in caught.value.message
    assert not (tmp_path / "m.gguf").exists()


def test_a_smollm3_whose_layers_skip_rope_unlike_llama_cpps_is_refused(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "smollm3", family="smollm3")  # its second of two layers has no rope
    with pytest.raises(ModelError) as caught:
        write_gguf(folder, tmp_path / "m.gguf", "f16", name="smollm3")
    assert "every 4th layer" in caught.value.message and not (tmp_path / "m.gguf").exists()


@pytest.mark.integration  # trains a tiny model of each family
@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_a_family_release_passes_the_parity_gate_through_llama_cpp(family: str, tmp_path: Path) -> None:
    import json

    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.evaluate.evaluate import evaluate
    from slmloop.project import open_project
    from slmloop.release.export import export_release
    from slmloop.release.registry import promote
    from slmloop.train.recipe import train
    from tests.conftest import write_project
    from tests.tiny import toy_rows

    base = build_tiny_model(tmp_path / family, family=family)
    root = write_project(
        tmp_path / "proj", base, toy_rows(120), train={"epochs": 2}, export={"dtype": "fp32", "gguf": ["f16"]}
    )
    p = open_project(root)
    import_source(p, p.manifest.data.sources[0])
    prepare_dataset(p)
    p.manifest.eval.compare.baseline = "none"
    run = train(p)
    evaluate(p, run.name)
    rel = export_release(p, run.name)
    parity = json.loads((p.locate(rel.path) / "manifest.json").read_text())["parity"]
    f16 = parity["artifacts"]["gguf/model-f16.gguf"]
    assert f16["engine"] == "llamacpp" and f16["rows"] > 0
    assert f16["agreement"] >= p.manifest.export.parity_min_agreement, (family, f16)
    assert promote(p, f"v{rel.version}", "production", reason="family parity").version == rel.version  # gated
    p.close()


@pytest.mark.parametrize(("qtype", "ftype"), [("q4_k_m", 15), ("q5_k_m", 17)])
def test_k_quants_come_from_llama_cpps_quantizer_and_score_near_the_model(
    qtype: str, ftype: int, tmp_path: Path
) -> None:
    import gguf

    folder = build_tiny_model(tmp_path / "qwen2", family="qwen2")
    ref = ResolvedModel("qwen2", str(folder), "local")
    model, tok = load_causal_lm(ref, torch.float32), load_tokenizer(ref)
    path = write_gguf(folder, tmp_path / f"m-{qtype}.gguf", qtype, name="qwen2")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [f"m-{qtype}.gguf"]  # no f16 left over
    assert int(gguf.GGUFReader(path).fields["general.file_type"].contents()) == ftype
    prompt = render_prompt(tok, [{"role": "user", "content": "see you at the station tomorrow"}])
    want = [lp for lp, _ in continuation_logprobs(model, tok, [prompt], ["meeting moved to lunch"])]
    assert llama_scores(path, [prompt], ["meeting moved to lunch"]) == pytest.approx(want, rel=0.15)
