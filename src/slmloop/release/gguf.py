"""GGUF export of a merged release (Llama, Qwen2, Qwen3, SmolLM3), for llama.cpp and Ollama.

    releases/v3/gguf/
      model-q8_0.gguf     weights (q8_0 or f16), tokenizer, chat template and EOS embedded
      Modelfile           `ollama create NAME -f Modelfile`: the template, the stop token,
                          greedy decoding and the system message the model was trained with

Written with the ``gguf`` package (the writer llama.cpp maintains), tensor names from its
own architecture tables. What a converter must get right, and where models exported
elsewhere go wrong:

- Llama's query/key projections are permuted from the Hugging Face rotary layout
  (two halves) to GGML's (interleaved pairs), as llama.cpp's converter does (Qwen
  rotates halves in llama.cpp too: kept as they are);
- Llama 3's rope scaling is carried as llama.cpp reads it, one factor per rotary
  frequency (``rope_freqs``);
- every token keeps its id; special tokens (``<|im_end|>`` …) are typed CONTROL so
  llama.cpp parses them in a prompt instead of spelling them out;
- the EOS id is the one training appended to every answer, so generation stops;
- the pre-tokenizer name is taken from the GGUF the base model came from when
  there is one (the embedded default), else from the tokenizer's own metadata.

:func:`slmloop.release.parity.gguf_parity` then checks the result: the GGUF run by
llama.cpp and the Hugging Face model answer the same gold rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from slmloop.errors import ModelError
from slmloop.store import atomic_write_bytes

__all__ = [
    "ARCHITECTURES",
    "GGUF_TYPES",
    "gguf_file_name",
    "llama3_rope_factors",
    "modelfile",
    "pre_tokenizer_name",
    "source_pre_tokenizer",
    "write_gguf",
    "write_modelfile",
]

GGUF_TYPES = ("f16", "q8_0", "q5_k_m", "q4_k_m")
#: types llama.cpp's own quantizer writes (from an f16 file written here): llama-cpp-python's
#: ``llama_model_quantize``, where it is installed
K_QUANTS = {"q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def gguf_file_name(qtype: str) -> str:
    return f"model-{qtype}.gguf"


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotary halves → GGML interleaved pairs (the layout llama.cpp's rope expects)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def source_pre_tokenizer(base_folder: Path) -> str | None:
    """The ``tokenizer.ggml.pre`` of the GGUF a catalog model was converted from, if it was."""
    from gguf import GGUFReader

    source = base_folder / "slmloop-source.json"
    if not source.exists():
        return None
    path = Path(json.loads(source.read_text())["gguf"])
    if not path.exists():
        return None
    field = GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return str(field.contents()) if field is not None else None


#: the digit rule of a split pattern in the GPT-4 style (Llama 3, Qwen2) -> llama.cpp's name for that pattern
_SPLIT_DIGITS = {"\\p{N}{1,3}": "llama-bpe", "\\p{N}|": "qwen2"}


def pre_tokenizer_name(folder: Path) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for how the tokenizer in ``folder`` splits text before its
    merges, read from tokenizer.json: GPT-2's byte-level split, SmolLM's (digits one by one, then GPT-2's),
    Llama 3's and Qwen2's GPT-4-style patterns. Anything else: llama.cpp's default (the parity gate then
    shows whether llama.cpp reads the text as the model does)."""
    try:
        pre = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    except (OSError, ValueError):
        return "default"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        pattern = str((parts[0].get("pattern") or {}).get("Regex", ""))
        for digits, name in _SPLIT_DIGITS.items():
            if digits in pattern:
                return name
    return "default"


def _tokens(folder: Path, vocab_size: int) -> tuple[list[bytes], list[int]]:
    """Every token by id, with its GGUF type (special tokens CONTROL, so prompts can name them)."""
    from gguf import TokenType

    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE" or (data.get("decoder") or {}).get("type") != "ByteLevel":
        raise ModelError(
            "GGUF export supports byte-level BPE tokenizers (GPT-2 style, as Llama-3 and SmolLM use)",
            hint="Export without GGUF (export.gguf: []) and serve the safetensors release.",
        )
    by_id: dict[int, tuple[str, int]] = {i: (t, int(TokenType.NORMAL)) for t, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        special = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], int(special))
    tokens: list[bytes] = []
    types: list[int] = []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", int(TokenType.UNUSED)))
        tokens.append(text.encode("utf-8"))
        types.append(kind)
    return tokens, types


#: Hugging Face architecture → (the gguf package's architecture, whether q/k are permuted to GGML's rotary layout:
#: llama.cpp rotates Llama's interleaved pairs, and Qwen's halves as Hugging Face does)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("LLAMA", True),
    "Qwen2ForCausalLM": ("QWEN2", False),
    "Qwen3ForCausalLM": ("QWEN3", False),
    "SmolLM3ForCausalLM": ("SMOLLM3", True),
}

#: llama.cpp's SmolLM3: every 4th layer without rotary embeddings (it reads no setting for it)
SMOLLM3_NO_ROPE_EVERY = 4


def _config(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text())
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise ModelError(
            f"GGUF export supports {', '.join(a.removesuffix('ForCausalLM') for a in ARCHITECTURES)} models; "
            f"this release is {arch}",
            hint="Export without GGUF (export.gguf: []) and serve the safetensors release.",
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default")) or "default"
    if kind not in ("default", "llama3") or (kind == "llama3" and arch != "LlamaForCausalLM"):
        raise ModelError(
            f"GGUF export does not handle {arch}'s rope scaling {kind!r} yet",
            hint="Export without GGUF (export.gguf: []).",
        )
    if arch == "SmolLM3ForCausalLM":
        n = int(config["num_hidden_layers"])
        llama_cpp = [int((i + 1) % SMOLLM3_NO_ROPE_EVERY != 0) for i in range(n)]
        if list(config.get("no_rope_layers") or llama_cpp) != llama_cpp:
            raise ModelError(
                f"this SmolLM3 skips rotary embeddings in layers {config['no_rope_layers']} (0 = none), but llama.cpp "
                f"skips them in every {SMOLLM3_NO_ROPE_EVERY}th layer: its GGUF would answer differently",
                hint="Export without GGUF (export.gguf: []) and serve the safetensors release.",
            )
    config["_rope"] = {**rope, "rope_type": kind}
    config["_rope_theta"] = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    return config


def llama3_rope_factors(rope: dict[str, Any], theta: float, head_dim: int) -> np.ndarray:
    """Llama 3's rope scaling as llama.cpp reads it: what each rotary frequency is divided by (``rope_freqs``).
    Short wavelengths keep their frequency, long ones are divided by ``factor``, those between are smoothed."""
    import math

    factor = float(rope["factor"])
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    context = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < context / high:
            out.append(1.0)
        elif wavelen > context / low:
            out.append(factor)
        else:
            smooth = (context / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def write_gguf(merged: Path, out: Path, qtype: str, *, name: str, pre: str | None = None) -> Path:
    """Write the merged Hugging Face folder ``merged`` as one GGUF file ``out`` of ``qtype`` (:data:`GGUF_TYPES`)."""
    import gguf
    import torch
    from safetensors.torch import load_file

    if qtype not in GGUF_TYPES:
        raise ModelError(f"unknown GGUF type {qtype!r}", hint=f"Use one of: {', '.join(GGUF_TYPES)}.")
    if qtype in K_QUANTS:
        f16 = write_gguf(merged, out.with_name(out.name + ".f16.tmp"), "f16", name=name, pre=pre)
        try:
            return _quantize(f16, out, qtype)
        finally:
            f16.unlink(missing_ok=True)
    config = _config(merged)
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden, n_layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    vocab_size = int(config["vocab_size"])

    arch_name, permute = ARCHITECTURES[config["architectures"][0]]
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    writer = gguf.GGUFWriter(str(out) + ".tmp", gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config["_rope_theta"])
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(vocab_size)
    file_type = gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types = _tokens(merged, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre or pre_tokenizer_name(merged))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(merged, load_merges=True, n_vocab=vocab_size)
    tok_config = json.loads((merged / "tokenizer_config.json").read_text())
    eos = tok_config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    if eos is not None:  # the EOS training appended to every answer: generation must stop on it
        special.special_token_ids["eos"] = tokens.index(str(eos).encode("utf-8"))
    special.add_to_gguf(writer, quiet=True)

    tensors = load_file(merged / "model.safetensors")
    names = gguf.get_tensor_name_map(arch, n_layers)
    tied = "lm_head.weight" not in tensors or bool(config.get("tie_word_embeddings"))
    if config["_rope"]["rope_type"] == "llama3":  # the scaling as llama.cpp applies it: one factor per frequency
        factors = llama3_rope_factors(config["_rope"], config["_rope_theta"], head_dim)
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors)
    for hf_name, tensor in tensors.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reads the output projection from token_embd when there is none
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelError(f"GGUF export does not know the tensor {hf_name!r}", hint="Export without GGUF.")
        data = tensor.to(torch.float32).numpy()
        if permute and hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif permute and hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        if data.ndim == 1:  # norms and biases stay f32
            writer.add_tensor(gguf_name, data.astype(np.float32))
        elif qtype == "q8_0":
            packed = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, packed, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    Path(str(out) + ".tmp").replace(out)
    return out


def _quantize(f16: Path, out: Path, qtype: str) -> Path:
    """``f16`` quantized to ``qtype`` by llama.cpp's quantizer (k-quants; tensors whose rows do not split into
    its blocks get llama.cpp's own fallback type)."""
    import ctypes
    import os

    from slmloop.models.llamacpp import llama_cpp_available

    if not llama_cpp_available():
        raise ModelError(
            f"GGUF {qtype} is written by llama.cpp's quantizer, and llama-cpp-python is not installed",
            hint="Run `make setup` (it installs llama-cpp-python), or export f16 / q8_0.",
        )
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, K_QUANTS[qtype])
    params.nthread = os.cpu_count() or 1
    tmp = out.with_name(out.name + ".tmp")
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"llama.cpp could not quantize the release to {qtype}", hint="Export f16 or q8_0 instead.")
    tmp.replace(out)
    return out


def modelfile(gguf_name: str, tokenizer: Any, system: str | None) -> str:
    """An Ollama Modelfile: the weights, a template that renders like the tokenizer's, the stop token."""
    eos = str(tokenizer.eos_token)
    lines = [f"FROM ./{gguf_name}", ""]
    template = str(getattr(tokenizer, "chat_template", "") or "")
    if "<|im_start|>" in template:  # ChatML, as SmolLM2 and Qwen use
        lines += [
            'TEMPLATE """{{- if .System }}<|im_start|>system',
            "{{ .System }}<|im_end|>",
            "{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}",
            "{{ .Content }}<|im_end|>",
            "{{ end }}<|im_start|>assistant",
            '"""',
            "",
        ]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{eos}"', "PARAMETER temperature 0", ""]
    return "\n".join(lines)


def write_modelfile(folder: Path, gguf_name: str, tokenizer: Any, system: str | None) -> None:
    atomic_write_bytes(folder / "Modelfile", modelfile(gguf_name, tokenizer, system).encode("utf-8"))
