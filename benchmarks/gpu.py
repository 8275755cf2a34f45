"""GPU measurements in one prepared script: training, memory, evaluation and serving on one accelerator.

A random-initialised model of Qwen2.5-0.5B's shape (24 layers, hidden 896, 14 query / 2 key-value heads,
a 151,936-token vocabulary; speed does not depend on the weights' values) with a byte-level tokenizer
trained on the bundled SMS rows. Measured, each against a reference from the same run:

- training: slmloop's real tokens/s against ``../shared/bench/baseline_hf_sft.py --tuned`` (bf16, dynamic
  padding, length-grouped batches) on the same rows, steps and batch size; ratio printed;
- memory: slmloop's measured peak against its own preflight forecast;
- batched gold evaluation: rows/s of ``slmloop eval`` on the fine-tuned run;
- serving: generated tokens/s of the exported release through slmloop's transformers engine (one batch of
  conversations, as the server groups them), and through vLLM's offline engine where vLLM is installed;
- data parallelism, where two or more GPUs are visible: tokens/s of ``slmloop train --num-processes N``
  against one process.

What cannot be measured here (no CUDA, no vLLM, one GPU) is listed under ``missing`` in the JSON.

    python benchmarks/gpu.py [--shape qwen2.5-0.5b|tiny] [--steps 30] [--batch-size 8] [--max-length 128]
        [--serve-rows 256] [--baseline ../shared/bench/baseline_hf_sft.py] [--json FILE] [--work DIR]

``--shape tiny`` (a 2-layer model) runs the same path in a minute on a CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

#: model shapes (transformers Qwen2Config keys)
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 4096,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
}


def sms_rows() -> list[dict[str, str]]:
    """The bundled SMS rows as generation rows (the message in, its label out)."""
    path = ROOT / "src" / "slmloop" / "examples" / "sms_spam" / "sms_spam.tsv"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition("\t")
        if text.strip():
            rows.append({"input": text.strip(), "output": label.strip()})
    return rows


def build_model(folder: Path, shape: str, texts: list[str]) -> Path:
    """A random model of ``shape`` and a byte-level BPE tokenizer trained on ``texts`` (ChatML template)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    from slmloop.models.loading import CHATML_TEMPLATE

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4000,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts + ["system user assistant"] * 50, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(**SHAPES[shape], eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def reference_tokens_per_s(baseline: Path, model: Path, rows: Path, args: argparse.Namespace) -> float:
    cmd = [sys.executable, str(baseline), "--model", str(model), "--data", str(rows), "--tuned"]
    cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if res.returncode != 0:
        sys.exit(f"the reference failed:\n{res.stderr[-3000:]}")
    return float(json.loads([x for x in res.stdout.splitlines() if x.startswith("{")][-1])["real_tokens_per_s"])


def serve_tokens_per_s(project: Any, version: int, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    """Generated tokens/s of the release through slmloop's transformers engine, all conversations in one call."""
    from slmloop.serve.server import load_predictor

    predictor = load_predictor(project, version)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    predictor.chat_many(conversations[:8], max_tokens)  # warm-up: kernels for the shapes
    t0 = time.perf_counter()
    answers = predictor.chat_many(conversations, max_tokens)
    seconds = time.perf_counter() - t0
    tokens = sum(a.completion_tokens for a in answers)
    return tokens / seconds, tokens


def vllm_tokens_per_s(model: Path, tokenizer: Any, prompts: list[str], max_tokens: int) -> float:
    """Generated tokens/s of vLLM's offline engine on the same merged model and prompts (greedy)."""
    from vllm import LLM, SamplingParams

    from slmloop.models.loading import render_prompt

    llm = LLM(model=str(model), dtype="bfloat16", gpu_memory_utilization=0.5, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    rendered = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    llm.generate(rendered[:8], params)
    t0 = time.perf_counter()
    outs = llm.generate(rendered, params)
    seconds = time.perf_counter() - t0
    return sum(len(o.outputs[0].token_ids) for o in outs) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--serve-rows", type=int, default=256)
    ap.add_argument("--serve-tokens", type=int, default=32)
    ap.add_argument("--baseline", type=Path, default=ROOT.parent / "shared" / "bench" / "baseline_hf_sft.py")
    ap.add_argument("--work", type=Path, help="keep the model and project here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import torch

    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.data.versions import load_dataset
    from slmloop.evaluate.evaluate import evaluate
    from slmloop.models.catalog import ResolvedModel
    from slmloop.models.loading import load_tokenizer
    from slmloop.predict.targets import resolve_run
    from slmloop.project import open_project
    from slmloop.release.export import export_release
    from slmloop.train.recipe import train

    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA here: not GPU numbers)",
        "shape": args.shape,
        "missing": [],
    }
    work = args.work or Path(tempfile.mkdtemp(prefix="slmloop-gpu-"))
    rows = sms_rows()
    print(f"model of {args.shape}'s shape, random weights …", flush=True)
    model_dir = build_model(work / "model", args.shape, [r["input"] for r in rows])
    root = work / "project"
    (root / "data").mkdir(parents=True, exist_ok=True)
    with open(root / "data" / "rows.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    manifest = {
        "task": {"type": "generation"},  # the user turn is the prompt, as in the reference
        "data": {
            "sources": [{"path": "data/rows.jsonl"}],
            "leakage": {"semantic": False},
            "split": {"validation": 0.1, "gold": 0.2},
        },
        "model": {"base": str(model_dir), "max_length": args.max_length},
        "train": {
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "eval_every": args.steps,
            "checkpoint_every": 10_000,
        },
        "eval": {"max_new_tokens": 8, "compare": {"baseline": "none"}},
        "export": {"gguf": []},
    }
    (root / "slmloop.yaml").write_text(yaml.safe_dump(manifest))
    project = open_project(root)
    import_source(project, project.manifest.data.sources[0])
    prepare_dataset(project)
    splits = load_dataset(project)

    if args.baseline.exists():
        pairs = work / "train.jsonl"
        with open(pairs, "w", encoding="utf-8") as f:
            for r in splits.train:
                f.write(json.dumps({"prompt": r["input"], "completion": r["output"]}) + "\n")
        print(f"reference: {args.baseline.name} --tuned, {args.steps} steps × {args.batch_size} …", flush=True)
        result["reference_tokens_per_s"] = round(reference_tokens_per_s(args.baseline, model_dir, pairs, args), 1)
    else:
        result["missing"].append(f"training reference ({args.baseline} not found)")

    print(f"slmloop: {args.steps} steps × {args.batch_size} …", flush=True)
    run = train(project)
    m = run.metrics
    result |= {
        "slmloop_tokens_per_s": round(m["tokens_per_s"], 1),
        "peak_gib": round(m["peak_gib"], 2),
        "forecast_peak_gib": round(m["forecast_peak_gib"], 2),
        "peak_over_forecast": round(m["peak_gib"] / m["forecast_peak_gib"], 2) if m["forecast_peak_gib"] else None,
    }
    if "reference_tokens_per_s" in result:
        result["training_ratio"] = round(result["slmloop_tokens_per_s"] / result["reference_tokens_per_s"], 2)

    print("gold evaluation …", flush=True)
    ev = evaluate(project, run.name)
    result["eval_rows"] = len(splits.gold)
    result["eval_rows_per_s"] = round(float(ev.metrics["rows_per_s"]), 1)

    print("export and serving …", flush=True)
    release = export_release(project, run.name)
    prompts = [r["input"] for r in (splits.gold * (args.serve_rows // max(len(splits.gold), 1) + 1))][: args.serve_rows]
    rate, tokens = serve_tokens_per_s(project, release.version, prompts, args.serve_tokens)
    result |= {"serve_tokens_per_s": round(rate, 1), "serve_tokens": tokens, "serve_conversations": len(prompts)}
    merged = project.locate(release.path) / "merged"
    if cuda and importlib.util.find_spec("vllm") is not None:
        tok = load_tokenizer(ResolvedModel("release", str(merged), "local"))
        result["vllm_tokens_per_s"] = round(vllm_tokens_per_s(merged, tok, prompts, args.serve_tokens), 1)
        result["serve_vs_vllm"] = round(result["serve_tokens_per_s"] / result["vllm_tokens_per_s"], 2)
    else:
        result["missing"].append("vLLM serving (needs CUDA and vLLM installed)")
    project.close()

    if gpus >= 2:
        print(f"data parallelism over {gpus} GPUs …", flush=True)
        cmd = [sys.executable, "-m", "slmloop", "train", "--num-processes", str(gpus), "--project", str(root)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        project = open_project(root)
        newest = resolve_run(project, "latest")
        result["dp_processes"] = gpus
        result["dp_tokens_per_s"] = round(newest.metrics["tokens_per_s"], 1)
        result["dp_speedup"] = round(result["dp_tokens_per_s"] / result["slmloop_tokens_per_s"], 2)
        project.close()
    else:
        result["missing"].append("data parallelism (needs two or more GPUs)")

    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if "training_ratio" in result:
        print(
            f"\ntraining: slmloop {result['slmloop_tokens_per_s']} vs reference {result['reference_tokens_per_s']} "
            f"real tokens/s = {result['training_ratio']}x; peak {result['peak_gib']} GiB vs forecast "
            f"{result['forecast_peak_gib']} GiB"
        )


if __name__ == "__main__":
    main()
