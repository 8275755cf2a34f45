"""Evaluation throughput: batched generation (KV cache, left padding, greedy) vs one example at a time.

Same model, same gold rows, same decoding, in one run; prints rows/s of both, the
ratio (target: >= 4x), and whether the answers are identical.

    python benchmarks/eval_throughput.py [--rows 120] [--batch-size 16] [--max-new-tokens 24]
        [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp32"],
        help="bf16 answers can differ between batch shapes by rounding; fp32 ones match",
    )
    args = ap.parse_args()

    from slmloop.manifest import TaskConfig
    from slmloop.models.catalog import resolve_model
    from slmloop.models.inference import generate
    from slmloop.models.loading import load_causal_lm, load_tokenizer, pick_dtype, render_prompt
    from slmloop.predict.tasks import prompt_messages

    task = TaskConfig(
        type="classification",
        labels=["ham", "spam"],
        instruction="Classify the SMS message as spam or ham. Answer with the label only.",
    )
    lines = (ROOT / "src/slmloop/examples/sms_spam/sms_spam.tsv").read_text(encoding="utf-8").splitlines()
    rows = [{"text": line.split("\t", 1)[1], "label": line.split("\t", 1)[0]} for line in lines[-args.rows :]]
    ref = resolve_model(args.model)
    tok = load_tokenizer(ref)
    model = load_causal_lm(ref, pick_dtype(args.precision))
    prompts = [render_prompt(tok, prompt_messages(task, r)) for r in rows]
    generate(model, tok, prompts[:4], max_new_tokens=4, batch_size=4)  # warm-up

    t0 = time.perf_counter()
    single = [generate(model, tok, [p], max_new_tokens=args.max_new_tokens, batch_size=1)[0] for p in prompts]
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    batched_s = time.perf_counter() - t0
    same = sum(a[0] == b[0] for a, b in zip(single, batched, strict=True))
    result = {
        "model": args.model,
        "rows": len(rows),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "dtype": str(model.dtype).removeprefix("torch."),
        "one_at_a_time_rows_per_s": round(len(rows) / single_s, 2),
        "batched_rows_per_s": round(len(rows) / batched_s, 2),
        "ratio": round(single_s / batched_s, 2),
        "new_tokens": sum(n for _, n in batched),
        "identical_answers": f"{same}/{len(rows)}",
    }
    print(json.dumps(result, indent=2))
    print(
        f"\nbatched {result['batched_rows_per_s']} rows/s vs one at a time {result['one_at_a_time_rows_per_s']} "
        f"rows/s = {result['ratio']}x; identical answers {result['identical_answers']}"
    )


if __name__ == "__main__":
    main()
