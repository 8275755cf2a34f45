"""Training throughput: slmloop's recipe against the plain Transformers + PEFT recipe, in one run.

Both train a LoRA adapter on the same model (SmolLM2-135M-Instruct by default)
and the same rows (SMS spam as prompt/completion pairs, formatted with the
model's chat template) for the same number of examples. Printed:

- real (non-padding) tokens per second of each, and their ratio (target: >= 4x);
- validation loss on the answer tokens of held-out rows after training, for both
  adapters, measured by the same code.

The reference is ``../shared/bench/baseline_hf_sft.py``, run unmodified in a
subprocess; a wrapper only saves its adapter when its ``Trainer.train`` returns,
so the two validation losses can be compared.

    python benchmarks/train_throughput.py [--steps 30] [--batch-size 8] [--max-length 128]
        [--model smollm2-135m-instruct] [--baseline ../shared/bench/baseline_hf_sft.py]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
INSTRUCTION = "Classify this SMS message as spam or ham. Answer with one word."

WRAPPER = """
import runpy, sys
import transformers
out = sys.argv.pop(1)
original = transformers.Trainer.train
def train_and_save(self, *a, **k):
    result = original(self, *a, **k)
    self.model.save_pretrained(out)
    return result
transformers.Trainer.train = train_and_save
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def sms_rows() -> list[dict[str, str]]:
    path = ROOT / "src" / "slmloop" / "examples" / "sms_spam" / "sms_spam.tsv"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, text = line.split("\t", 1)
        rows.append({"input": f"{INSTRUCTION}\n\n{text}", "output": label})
    return rows


def val_loss(model_spec: str, adapter: Path, examples: list, max_tokens: int) -> float:
    import torch

    from slmloop.models.catalog import resolve_model
    from slmloop.models.loading import load_causal_lm
    from slmloop.train.recipe import AnswerLoss, validation_loss

    model = load_causal_lm(
        resolve_model(model_spec), torch.bfloat16, adapter=adapter, merge=False, attn_implementation="eager"
    )
    return float(validation_loss(AnswerLoss(model), examples, PAD[0], max_tokens, torch.device("cpu")))


PAD: list[int] = [0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--baseline", default=str(ROOT.parent / "shared" / "bench" / "baseline_hf_sft.py"))
    args = ap.parse_args()
    baseline = Path(args.baseline)
    if not baseline.exists():
        sys.exit(f"reference script not found: {baseline} (pass --baseline PATH)")

    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.data.versions import load_dataset
    from slmloop.models.catalog import resolve_model
    from slmloop.models.loading import load_tokenizer
    from slmloop.project import open_project
    from slmloop.train.batching import encode_rows
    from slmloop.train.recipe import train

    model_dir = resolve_model(args.model).path
    with tempfile.TemporaryDirectory(prefix="slmloop-bench-train-") as d:
        root = Path(d)
        (root / "data").mkdir()
        with open(root / "data" / "rows.jsonl", "w", encoding="utf-8") as f:
            for r in sms_rows():
                f.write(json.dumps(r) + "\n")
        manifest = {
            "task": {"type": "generation"},  # no instruction: the user turn is the prompt, as in the reference
            "data": {
                "sources": [{"path": "data/rows.jsonl"}],
                "leakage": {"semantic": False},
                "split": {"validation": 0.1, "gold": 0.1},
            },
            "model": {"base": args.model, "max_length": args.max_length},
            "train": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "lora_r": args.lora_r,
                "lora_alpha": 2 * args.lora_r,
                "eval_every": args.steps,
                "checkpoint_every": 10_000,
            },
        }
        (root / "slmloop.yaml").write_text(yaml.safe_dump(manifest))
        project = open_project(root)
        import_source(project, project.manifest.data.sources[0])
        prepare_dataset(project)
        splits = load_dataset(project)
        # both recipes see the same training rows, as prompt/completion pairs
        with open(root / "train.jsonl", "w", encoding="utf-8") as f:
            for r in splits.train:
                f.write(json.dumps({"prompt": r["input"], "completion": r["output"]}) + "\n")
        tok = load_tokenizer(resolve_model(args.model))
        PAD[0] = tok.pad_token_id
        val_examples = encode_rows(tok, project.manifest.task, splits.validation, args.max_length)

        print(f"reference: {baseline.name}, {args.steps} steps x {args.batch_size} examples …", flush=True)
        wrapper = root / "run_baseline.py"
        wrapper.write_text(WRAPPER)
        ref_adapter = root / "reference-adapter"
        cmd = [
            sys.executable,
            str(wrapper),
            str(ref_adapter),
            str(baseline),
            "--model",
            model_dir,
            "--data",
            str(root / "train.jsonl"),
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--max-length",
            str(args.max_length),
            "--lora-r",
            str(args.lora_r),
            "--out",
            str(root / "reference-trainer"),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if res.returncode != 0:
            sys.exit(f"the reference failed:\n{res.stderr[-3000:]}")
        reference = json.loads([x for x in res.stdout.splitlines() if x.startswith("{")][-1])

        print(f"slmloop: {args.steps} steps x {args.batch_size} examples …", flush=True)
        run = train(project)
        ours = run.metrics
        ours_adapter = project.locate(run.path) / "adapter"
        project.close()

        ref_val = val_loss(args.model, ref_adapter, val_examples, 2048)
        our_val = val_loss(args.model, ours_adapter, val_examples, 2048)

    result = {
        "model": args.model,
        "examples_seen": args.steps * args.batch_size,
        "reference_real_tokens_per_s": reference["real_tokens_per_s"],
        "reference_padded_tokens_per_s": reference["padded_tokens_per_s"],
        "slmloop_real_tokens_per_s": round(ours["tokens_per_s"], 1),
        "ratio": round(ours["tokens_per_s"] / reference["real_tokens_per_s"], 2),
        "reference_val_loss": round(ref_val, 4),
        "slmloop_val_loss": round(our_val, 4),
        "validation_rows": len(val_examples),
        "slmloop_forecast_s": round(ours["forecast_seconds"], 1),
        "slmloop_measured_s": round(ours["train_seconds"], 1),
        "slmloop_forecast_peak_gib": round(ours["forecast_peak_gib"], 2),
        "slmloop_peak_gib": round(ours["peak_gib"], 2),
    }
    print(json.dumps(result, indent=2))
    print(
        f"\nslmloop {result['slmloop_real_tokens_per_s']} vs reference {result['reference_real_tokens_per_s']} real "
        f"tokens/s = {result['ratio']}x; validation loss (answer tokens) after {result['examples_seen']} examples: "
        f"slmloop {result['slmloop_val_loss']} vs reference {result['reference_val_loss']}"
    )


if __name__ == "__main__":
    main()
