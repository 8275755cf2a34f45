"""The ``slmloop.yaml`` schema and its loading.

One small config object per stage; every field is documented, unknown keys and
wrong types are rejected, and :func:`load_manifest` reports *every* problem at
once with its key path (``train.learning_rate``) instead of stopping at the
first.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slmloop.errors import ConfigError
from slmloop.metrics import metric_names

__all__ = [
    "MANIFEST_NAME",
    "BakeoffConfig",
    "ChecksConfig",
    "CompareConfig",
    "DataConfig",
    "DedupeConfig",
    "EarlyStoppingConfig",
    "EndpointConfig",
    "EvalConfig",
    "ExportConfig",
    "ForgettingConfig",
    "GateConfig",
    "HalvingConfig",
    "JudgeConfig",
    "LeakageConfig",
    "Manifest",
    "ModelConfig",
    "MonitorConfig",
    "PiiConfig",
    "ProjectConfig",
    "RangeSpec",
    "ServeConfig",
    "SourceConfig",
    "SplitConfig",
    "TaskConfig",
    "TrainConfig",
    "load_eval_pack",
    "load_manifest",
    "parse_manifest",
]

MANIFEST_NAME = "slmloop.yaml"

TaskType = Literal["classification", "extraction", "generation", "chat"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ProjectConfig(Section):
    name: str = Field("slmloop-project", description="Human name of the project.")
    store_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the metadata store. Default: SQLite inside "
        ".slmloop/ in the project folder; a postgresql:// URL shares it with a team.",
    )


class AbstainConfig(Section):
    max_in_scope_drop: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="The threshold is the highest that costs at most this share of in-scope accuracy on the "
        "validation split (rows the model gets right and abstains on).",
    )
    min_oos_recall: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Instead: the lowest threshold that catches this share of the validation split's "
        "out-of-scope rows (needs rows labelled task.out_of_scope there).",
    )


class TaskConfig(Section):
    type: TaskType = Field(description="classification | extraction | generation | chat")
    instruction: str = Field(
        "",
        description="What the model is asked to do; sent as the system message of every example.",
    )
    labels: list[str] | Literal["auto"] | None = Field(
        None,
        description="classification: the allowed labels (rows with other labels are rejected), or auto: "
        "every label found in the data (`slmloop data prepare` prints them).",
    )
    fields: list[str] | Literal["auto"] | None = Field(
        None,
        description="extraction: the JSON fields an answer may hold, or auto: every key found in the data. "
        "A field is optional (present only when it occurs) unless listed in `required`.",
    )
    required: list[str] = Field(
        default_factory=list, description="extraction: fields every answer must hold (the rest are optional)."
    )
    answer: Literal["auto", "json", "inline"] = Field(
        "auto",
        description="extraction: how a fine-tuned model writes its answer. json: the JSON object itself; inline: the "
        "request copied with each value marked where it occurs, [field: value], which slmloop turns into the JSON "
        "object (the model reads the request as a sequence tagger does; measured: docs/training.md). auto: inline "
        "when most training values are "
        "spans of their request and all are strings, else json; training decides and records it. Evaluation, "
        "serving and exports report the JSON object either way; a zero-shot model always answers JSON.",
    )

    out_of_scope: str | None = Field(
        None,
        description="classification: the label of requests that belong to none of the others (rows with it train "
        "the model like any label, and choose the abstention threshold), and the answer when the model abstains.",
    )
    abstain: AbstainConfig | None = Field(
        None,
        description="classification: answer out_of_scope when the model is unsure (its calibrated confidence, "
        "label prior included, is below a threshold chosen on validation after training). Off unless set.",
    )

    @model_validator(mode="after")
    def _abstention(self) -> TaskConfig:
        if self.abstain is not None and self.type != "classification":
            raise ValueError("abstain applies to classification tasks only")
        if self.abstain is not None and self.out_of_scope is None:
            object.__setattr__(self, "out_of_scope", "out_of_scope")
        return self

    @property
    def unresolved(self) -> bool:
        """True while labels or fields still say ``auto`` (resolved from the data by ``data prepare``)."""
        return self.labels == "auto" or self.fields == "auto"

    @property
    def label_list(self) -> list[str]:
        """The labels; the out-of-scope label is one of them wherever it is named."""
        labels = self.labels if isinstance(self.labels, list) else []
        if self.out_of_scope is not None and labels and self.out_of_scope not in labels:
            return [*labels, self.out_of_scope]
        return labels

    @property
    def field_list(self) -> list[str]:
        return self.fields if isinstance(self.fields, list) else []


class SourceConfig(Section):
    path: str = Field(description="File or folder, relative to the manifest.")
    format: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet", "hf"] = Field(
        "auto",
        description="auto: from the suffix (.jsonl, .json, .csv, .tsv, .parquet) or a datasets "
        "save_to_disk folder; hf: a Hugging Face dataset (folder or hub id).",
    )
    split: str | None = Field(None, description="hf: which split to read (default: train).")
    encoding: str = Field("utf-8", description="Text encoding; undecodable rows are rejected.")
    header: bool = Field(True, description="csv/tsv: the first row names the columns.")
    columns: list[str] | None = Field(None, description="csv/tsv without a header: names for the columns, in order.")
    delimiter: str | None = Field(None, description="csv/tsv: override the delimiter.")
    quoting: bool = Field(
        True,
        description="csv/tsv: honour double quotes. false reads quotes as plain characters "
        "(needed for files whose text contains unbalanced quotes).",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="task field -> source column, e.g. {text: message, label: category}. "
        "Unmapped task fields are looked up under their own name.",
    )


class SplitConfig(Section):
    validation: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction for validation.")
    gold: float = Field(0.2, gt=0.0, lt=1.0, description="Fraction frozen as the gold set (never trained on).")
    seed: int = Field(13, description="Seed of the split; same data + seed = same split.")
    stratify: bool | str = Field(
        True,
        description="true: keep the label balance in every split (classification); a field name: "
        "balance that field instead (e.g. a source column kept in the row's metadata); false: off.",
    )
    group_by: str | None = Field(
        None, description="Keep rows sharing this field's value in one split (e.g. a customer id)."
    )
    max_rows: int | None = Field(
        None, gt=0, description="Use a seeded sample of at most this many rows (quick experiments)."
    )


class DedupeConfig(Section):
    exact: bool = Field(True, description="Drop rows whose normalised input repeats an earlier row.")
    near: Literal["drop", "group", "off"] = Field(
        "drop",
        description="Near duplicates (MinHash LSH on character 5-grams): drop = keep the first of each "
        "cluster; group = keep them all but never split a cluster across train/validation/gold.",
    )
    near_threshold: float = Field(0.8, gt=0.0, le=1.0, description="Jaccard similarity that counts as near.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations (accuracy vs speed).")


PiiKind = Literal["email", "phone", "card", "iban", "ipv4", "ipv6"]


class PiiConfig(Section):
    mode: Literal["off", "redact", "block"] = Field(
        "off", description="redact: replace spans with [EMAIL], [PHONE] …; block: reject the row (pii_blocked)."
    )
    types: list[PiiKind] = Field(
        default_factory=lambda: list(typing.get_args(PiiKind)),
        description="Which kinds of PII to look for.",
    )


class LeakageConfig(Section):
    near_threshold: float = Field(
        0.6, gt=0.0, le=1.0, description="Jaccard (character 5-grams) above which a row leaks a gold row."
    )
    semantic: Literal["report", "block", "off"] = Field(
        "report",
        description="MiniLM cosine between training and gold inputs (paraphrases). report: measure the "
        "contamination and split every gold metric into rows with / without a close training neighbour; "
        "block: treat such rows as leaks (dropped by prepare, blocking train and eval); off: skip.",
    )
    semantic_threshold: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Cosine similarity from which a gold row counts as having a close training neighbour "
        "(docs/leakage.md: how the default was measured).",
    )
    embedding_model: str = Field("all-minilm-l6-v2", description="Embedder for the semantic check.")

    @field_validator("semantic", mode="before")
    @classmethod
    def _semantic_bool(cls, v: Any) -> Any:  # manifests written before "report" existed
        return {True: "block", False: "off"}.get(v, v) if isinstance(v, bool) else v


class DataConfig(Section):
    sources: list[SourceConfig] = Field(default_factory=list, description="Where rows come from.")
    normalize: bool = Field(True, description="Unicode NFC, control characters removed, whitespace collapsed.")
    max_tokens: int | None = Field(
        None, gt=0, description="Reject rows longer than this many tokens of the base model (too_long)."
    )
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    leakage: LeakageConfig = Field(default_factory=LeakageConfig)
    mapping_confidence: float = Field(
        0.75, ge=0.0, le=1.0, description="A proposed column mapping below this is not applied without --force."
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    gold: SourceConfig | None = Field(
        None,
        description="An external gold file (e.g. an official test set): it becomes the gold set as it is, "
        "every row accounted for like an import, and no gold split is taken from the sources.",
    )


class ModelConfig(Section):
    base: str = Field(
        "smollm2-135m-instruct",
        description="Catalog name (`slmloop models`), Hugging Face id or local folder of the base model; "
        "NAME@COMMIT pins a hub model to a commit.",
    )
    max_length: int = Field(
        256, gt=8, description="Longest example in tokens; longer rows are truncated at train time."
    )


class EarlyStoppingConfig(Section):
    metric: str = Field(
        "val_loss", description="val_loss (lower is better) or a metric of the task on the validation split."
    )
    patience: int = Field(3, gt=0, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0.0, description="Smallest change that counts as an improvement.")


class TrainConfig(Section):
    lora_r: int = Field(16, gt=0, description="LoRA rank: capacity of the adapter.")
    lora_alpha: int = Field(32, gt=0, description="LoRA scale numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input (slower steps on CPU).")
    target_modules: Literal["auto", "all-linear"] | list[str] = Field(
        "all-linear",
        description="auto: attention projections of the architecture; all-linear: every "
        "linear layer (more capacity, slower); or explicit module names.",
    )
    lora_layers: int | float | None = Field(
        0.5,
        gt=0,
        description="Adapt only the top transformer layers: a count (15) or a share of them (0.5 = the top half). "
        "The backward pass stops at the lowest adapted layer, so fewer layers train faster. null: every layer.",
    )
    prompt: Literal["compact", "full"] = Field(
        "compact",
        description="compact: the instruction only; the model learns the labels / JSON keys from the answers, so "
        "a row costs the same with 2 or 150 labels. full: the label list / keys in every row (what a zero-shot "
        "model needs; base-model evaluation always uses it). Recorded in the run and shipped in the release.",
    )
    shortlist: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="Classification: after each request the model reads the labels of its most similar "
        "training requests (this many, most likely first; MiniLM neighbours) and learns when to follow "
        "them. Extraction: it reads this many of its most similar training requests with their answers "
        "(examples of the annotation conventions). auto: 5 labels when the task has 10 labels or more, "
        "else off; no examples for extraction (measured: docs/training.md); 0: off. Recorded in the run; "
        "the index ships with the release.",
    )
    label_prior: Literal["auto", "off"] = Field(
        "auto",
        description="Classification: a logistic regression over the MiniLM embeddings of the training requests "
        "is fit beside the adapter, and a label's score becomes log P(model) + w * log P(regression) (the two "
        "make different mistakes). auto: w is chosen on the validation split after training (0: not used); "
        "off: the model's own scores. Recorded in the run; the regression ships with the release.",
    )
    span_prior: Literal["auto", "off"] = Field(
        "auto",
        description="Extraction: a CRF tagger (the crf baseline's) is fit on the training split, and after the "
        "model answers, every value the model or the tagger gives is rated by a judge (who gives it, the "
        "tagger's probability for its span): unlikely values are dropped, likely ones the model missed are "
        "added. auto: the judge is fit on the validation split after training (the model alone when it does "
        "not measure better: then it is not shipped); off: the model's own answers. Recorded in the run; the "
        "tagger ships with the release.",
    )
    learning_rate: float = Field(2e-3, gt=0.0, description="Peak learning rate.")
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="Fraction of steps to warm up.")
    epochs: float = Field(2.0, gt=0.0, description="Passes over the training split.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    rebalance: Literal["none", "sqrt", "equal"] = Field(
        "none",
        description="Classification data recipe: each epoch redraws the same number of rows with class shares "
        "proportional to sqrt(count) (sqrt) or equal (equal), so thin classes are seen more often. none: as they are.",
    )
    validation_rows: int = Field(
        256, gt=0, description="Rows of the validation split scored at each evaluation (loss and metric)."
    )
    distill_from: str | None = Field(
        None,
        description="Token-level distillation: a teacher with the student's tokenizer (run-N, vN, base, "
        "model:PATH) whose answer-token distributions the student also matches (KL at distill_temperature).",
    )
    distill_alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of the distillation term: (1 - a) · cross-entropy + a · T² · KL."
    )
    distill_temperature: float = Field(2.0, gt=0.0, description="Softmax temperature of the distillation term.")
    batch_size: int = Field(32, gt=0, description="Examples per batch (split into micro-batches by max_batch_tokens).")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    max_batch_tokens: int = Field(
        2048,
        gt=0,
        description="Padded tokens per forward pass; longer batches are split (same maths, "
        "bounded memory). Activation memory grows ~linearly with it.",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay on the adapter weights.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradients are clipped to this global norm.")
    seed: int = Field(13, description="Seed of the adapter's initialisation and of the batch order.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 where the hardware computes it fast (AVX512-BF16/AMX, GPUs)."
    )
    eval_every: int | None = Field(None, gt=0, description="Validation loss every N steps (default: ~4 times per run).")
    checkpoint_every: int = Field(
        50, gt=0, description="Save a resumable checkpoint (weights, optimizer, RNG, data position) every N steps."
    )
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="Stop when the validation metric stops improving; the best checkpoint is the result."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: much less memory, an extra forward pass."
    )
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="Also log metrics to TensorBoard and/or MLflow."
    )


class GateConfig(Section):
    metric: str = Field(description="A metric of the task (accuracy, macro_f1, exact_match, …).")
    op: Literal["gte", "lte"] = Field("gte", description="gte: metric >= threshold; lte: metric <= threshold.")
    threshold: float
    required: bool = Field(True, description="A failing required gate makes `slmloop eval` exit non-zero.")
    significant: bool = Field(
        False, description="Judge the gate on the confidence bound (lower for gte, upper for lte), not the estimate."
    )


class CompareConfig(Section):
    must_beat: Literal["none", "base", "production"] = Field(
        "none", description="The model must beat this one on the first metric, paired test on the same gold rows."
    )
    min_effect: float = Field(0.0, ge=0.0, description="Smallest improvement that counts (metric units).")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="Significance level of the paired test.")
    required: bool = Field(True, description="Not beating it makes `slmloop eval` exit non-zero.")
    baseline: str = Field(
        "best",
        description="A fine-tuned model must not be significantly worse than this cheap baseline on the same gold "
        "rows: best (the best baseline of the task), a baseline name (tfidf-lr, minilm-lr, crf, knn) or none.",
    )
    baseline_required: bool = Field(
        True, description="Losing significantly to the baseline makes `slmloop eval` exit non-zero."
    )


class ChecksConfig(Section):
    regex: str | None = Field(None, description="generation: every answer must fully match this regex.")
    json_schema: dict[str, Any] | None = Field(None, description="Answers must be JSON valid under this schema.")


class EndpointConfig(Section):
    url: str = Field(description="Base URL of an OpenAI-compatible API, e.g. https://api.openai.com/v1.")
    model: str = Field(description="Model name sent in each request.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    price_per_1k_input: float = Field(0.0, ge=0.0, description="Price per 1,000 prompt tokens.")
    price_per_1k_output: float = Field(0.0, ge=0.0, description="Price per 1,000 completion tokens.")
    max_concurrency: int = Field(4, gt=0, description="Requests in flight at once.")
    requests_per_second: float | None = Field(None, gt=0.0, description="Client-side rate limit.")
    timeout: float = Field(60.0, gt=0.0)
    max_retries: int = Field(5, ge=0, description="Retries on 429/5xx/network errors, with backoff.")
    prompt: Literal["full", "compact"] = Field(
        "full",
        description="Prompt style sent: full (label list / keys, for a zero-shot model) or compact (for a model "
        "fine-tuned by slmloop and served elsewhere).",
    )
    logprobs: bool = Field(
        False,
        description="Ask for each answer token's log-probability and its top 5 alternatives (OpenAI logprobs); "
        "kept with every answer (a distillation teacher's answers keep them in the dataset version).",
    )


class JudgeConfig(Section):
    endpoint: str = Field(description="Name of an entry in eval.endpoints that judges.")
    rubric: str = Field(
        "Score how well the answer does the task compared with the reference, from 1 (wrong) to 5 (as good).",
        description="What the judge is asked; stored beside every result.",
    )


class ForgettingConfig(Section):
    pack: str = Field(
        "gsm8k-numeric", description="A built-in general-capability pack, or a JSONL file of your own (see docs)."
    )
    rows: int | None = Field(
        100, gt=0, description="Rows of the pack used (null: all; both models score each; timing: docs/graduating.md)."
    )
    max_drop: float | None = Field(
        0.05, ge=0.0, description="Largest allowed fall of the pack's choice accuracy against the base model."
    )
    max_nll_rise: float | None = Field(
        None, ge=0.0, description="Largest allowed rise of the reference solutions' NLL (nats per token)."
    )
    required: bool = Field(True, description="A failed forgetting gate makes `slmloop eval` exit non-zero.")


class EvalConfig(Section):
    mode: Literal["auto", "rank", "generate"] = Field(
        "auto",
        description="classification: rank = pick the label the model finds most likely "
        "(never unparseable), generate = free generation parsed to a label. auto: rank for "
        "classification, generate otherwise.",
    )
    batch_size: int = Field(
        64,
        gt=0,
        description="Gold rows per forward pass. Larger batches generate faster on a CPU, for more memory; "
        "the default was chosen by timing generation and label ranking (docs/training.md#speed).",
    )
    max_new_tokens: int = Field(64, gt=0, description="Generation budget per gold row.")
    rank_margin: float | None = Field(
        6.0,
        gt=0.0,
        description="rank: labels whose log-probability falls this many nats below the best label are not "
        "scored to the end (their probability is below e^-margin of the top label's; the top label is "
        "always exact). null scores every label (slower with many labels).",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 where fast; fp32 for bit-for-bit comparisons between runs and releases."
    )
    constrain: Literal["off", "json_schema"] = Field(
        "json_schema",
        description="extraction: json_schema decodes every answer under the task's schema, in evaluation, serving "
        "and the parity check alike: a JSON answer holds only task.fields as keys (task.required always; "
        "eval.checks.json_schema where given) and one cut off by max_new_tokens ends at its last complete field; "
        "an inline answer copies its request, marked only with task.fields. off: a JSON object is opened and "
        "closed, its keys are free.",
    )
    metrics: list[str] = Field(
        default_factory=list, description="Metrics to report with CIs (default: the task's headline metrics)."
    )
    gates: list[GateConfig] = Field(default_factory=list, description="Thresholds a model must meet.")
    compare: CompareConfig = Field(default_factory=lambda: CompareConfig())
    checks: ChecksConfig = Field(default_factory=lambda: ChecksConfig())
    judge: JudgeConfig | None = Field(None, description="Optional LLM-as-judge through an OpenAI-compatible API.")
    forgetting: ForgettingConfig | None = Field(
        None,
        description="Score fine-tuned models and the base on a general-capability pack and bound the drop "
        "(the forgetting guard).",
    )
    endpoints: dict[str, EndpointConfig] = Field(
        default_factory=dict, description="OpenAI-compatible endpoints usable as models: `--model endpoint:NAME`."
    )
    bootstrap: int = Field(
        1000, ge=100, description="Bootstrap resamples for the intervals of metrics that are not rates (F1, chrF …)."
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence level of the intervals.")
    local_cost_per_hour: float = Field(
        0.05, ge=0.0, description="What an hour of the machine serving the local model costs (for cost/1k requests)."
    )


class ExportConfig(Section):
    merged: bool = Field(True, description="Also write the adapter merged into the base weights.")
    dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="dtype of merged weights.")
    gguf: list[Literal["f16", "q8_0", "q5_k_m", "q4_k_m"]] = Field(
        default_factory=list,
        description="Also write GGUF files of these types (Llama, Qwen2, Qwen3, SmolLM3 models) plus an Ollama "
        "Modelfile, each checked against the evaluation on the gold rows through llama.cpp (q5_k_m / q4_k_m are "
        "written by llama.cpp's quantizer).",
    )
    parity_rows: int = Field(
        500, gt=0, description="Gold rows each shipped file answers at export to check it against the evaluation."
    )
    parity_min_agreement: float | None = Field(
        0.98,
        ge=0.0,
        le=1.0,
        validation_alias=AliasChoices("parity_min_agreement", "gguf_min_agreement"),
        description="Promotion gate: each shipped file (merged weights, GGUF) must give the evaluated answer on at "
        "least this share of the parity rows (null: no gate).",
    )


class ServeConfig(Section):
    host: str = Field("127.0.0.1")
    port: int = Field(8000, gt=0, lt=65536)
    max_new_tokens: int = Field(128, gt=0, description="Default generation budget per request.")
    max_tokens_limit: int = Field(1024, gt=0, description="Largest max_tokens a request may ask for (else 422).")
    max_input_tokens: int = Field(
        2048, gt=0, description="Longest input (prompt tokens) a request may send; longer ones get 413."
    )
    max_request_bytes: int = Field(1_000_000, gt=0, description="Largest request body; larger ones get 413.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 where the hardware is fast.")
    engine: Literal["transformers", "llamacpp", "vllm"] = Field(
        "transformers",
        description="transformers: the merged safetensors (batched); llamacpp: the release's GGUF through "
        "llama.cpp (export.gguf must have written one); vllm: a vLLM server on the merged weights behind "
        "slmloop's front (GPU hosts; keys, limits, metrics and the request log stay).",
    )
    vllm_args: list[str] = Field(
        default_factory=list, description="Extra arguments for the vLLM server (e.g. --gpu-memory-utilization 0.8)."
    )
    batching: bool = Field(
        True, description="Group concurrent requests into one forward pass (false: one request at a time)."
    )
    max_batch: int = Field(32, gt=0, description="Most requests answered by one forward pass.")
    batch_wait_ms: float = Field(
        25.0,
        ge=0.0,
        description="Under load, how long a forming batch waits for the next request to join (ms); 8x this at "
        "most in all. An idle server answers a lone request at once.",
    )
    max_queue: int = Field(
        8,
        gt=0,
        description="Requests in flight at most beyond one full batch (max_batch): more get 429 with Retry-After at "
        "once, so under overload those admitted wait for about two batches at most (the default: a quarter batch).",
    )
    request_timeout_s: float = Field(
        60.0,
        gt=0.0,
        description="A request not answered within this many seconds gets 503; its work is dropped if it has "
        "not started.",
    )
    drain_s: float = Field(
        30.0, ge=0.0, description="On shutdown, seconds to answer the requests already queued; the rest get 503."
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted API keys (Authorization: Bearer KEY). Prefer api_keys_env: keys in the manifest "
        "end up in version control.",
    )
    api_keys_env: str = Field(
        "SLMLOOP_API_KEYS", description="Environment variable with comma-separated API keys (read at start)."
    )
    ui_keys_env: str = Field(
        "SLMLOOP_UI_KEYS",
        description="Environment variable with the dashboard's (admin) keys, comma-separated; the model "
        "server's API keys do not open the dashboard.",
    )
    reload_interval: float = Field(
        2.0, ge=0.0, description="Seconds between checks whether the served alias moved (0: never; hot swap)."
    )
    redact_pii: bool = Field(False, description="Redact PII (emails, phones, cards …) before logging a request.")
    log_retention_days: float | None = Field(
        90.0,
        gt=0.0,
        description="Logged requests older than this many days are deleted (at start, then hourly); null: kept. "
        "`slmloop monitor` reads the log, so keep at least the windows it compares.",
    )


class DriftThresholds(Section):
    """(warn, drift) effect sizes per signal; a signal needs p < alpha as well. Defaults: docs/monitoring.md."""

    embedding: tuple[float, float] = Field((0.005, 0.01), description="Unbiased MMD² of MiniLM embeddings.")
    length: tuple[float, float] = Field((0.15, 0.3), description="Kolmogorov-Smirnov D of word counts.")
    oov: tuple[float, float] = Field((0.03, 0.05), description="Rise of the share of words training never used.")
    label_mix: tuple[float, float] = Field(
        (0.1, 0.2), description="Bias-corrected Cramér's V between the answered label mix and that on gold."
    )
    confidence: tuple[float, float] = Field((0.05, 0.10), description="Drop of the mean top-label probability.")
    invalid: tuple[float, float] = Field((0.02, 0.05), description="Rise of the invalid-output rate.")


class MonitorConfig(Section):
    embedding_model: str = Field("all-minilm-l6-v2", description="Embedder for the semantic test.")
    min_requests: int = Field(20, gt=1, description="Fewer logged requests in a window: verdict 'insufficient'.")
    window: int | None = Field(
        None, gt=1, description="Requests per window (null: all requests of the run in one window)."
    )
    reference_size: int = Field(500, gt=1, description="Training inputs sampled as the reference.")
    alpha: float = Field(0.01, gt=0.0, lt=1.0, description="Significance level of each test.")
    permutations: int = Field(300, gt=10, description="Permutations for the embedding test.")
    thresholds: DriftThresholds = Field(default_factory=lambda: DriftThresholds())
    webhook: str | None = Field(None, description="URL that receives the run's JSON (POST) when the verdict is bad.")
    webhook_on: list[Literal["warn", "drift"]] = Field(
        default_factory=lambda: ["drift"],  # type: ignore[arg-type]
        description="Verdicts that trigger the webhook.",
    )


class RangeSpec(Section):
    low: float
    high: float
    log: bool = Field(False, description="Draw uniformly on a log scale (learning rates).")
    integer: bool = Field(False, description="Round the draw to an integer (ranks).")


def _default_space() -> dict[str, list[Any] | RangeSpec]:
    return {"learning_rate": [1e-3, 2e-3, 4e-3], "lora_r": [8, 16, 32]}


class HalvingConfig(Section):
    eta: int = Field(3, ge=2, description="At each rung only the best 1/eta of the trials train on.")
    min_epochs: float = Field(0.5, gt=0.0, description="Epochs every trial trains before the first cut.")


class BakeoffConfig(Section):
    trials: int = Field(
        6,
        gt=0,
        description="Settings tried: every combination of the space if it has no more, "
        "else this many drawn from it (seeded). The manifest's own train: settings are trial 1.",
    )
    metric: str | None = Field(None, description="Validation metric that ranks the trials (default: the headline).")
    space: dict[str, list[Any] | RangeSpec] = Field(
        default_factory=lambda: _default_space(),
        description="train: keys and the values to try: a list of choices, or {low, high, log, integer}.",
    )
    seed: int = Field(13, description="Seed of the draw from the space.")
    halving: HalvingConfig | None = Field(
        default_factory=lambda: HalvingConfig(),
        description="Successive halving (ASHA under Ray): trials are cut at rungs of min_epochs × eta^k by their "
        "validation metric; null: every trial trains its whole schedule.",
    )
    validation_rows: int = Field(1000, gt=0, description="Validation rows each trial is scored on.")
    include_default: bool = Field(True, description="Trial 1 is the manifest's own train: settings.")


SPACE_KEYS_EXCLUDED = ("early_stopping", "report_to", "validation_rows", "eval_every", "checkpoint_every")

#: training defaults that differ by task type, where the recipe sweep found another value best
#: (docs/training.md#the-default-recipe); a value written in the manifest always wins
TRAIN_DEFAULTS_BY_TASK: dict[str, dict[str, Any]] = {
    # slot extraction keeps gaining from a third epoch (docs/training.md#the-default-recipe)
    "extraction": {"epochs": 3.0},
}


class Manifest(Section):
    project: ProjectConfig = Field(default_factory=ProjectConfig)
    task: TaskConfig
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    bakeoff: BakeoffConfig = Field(default_factory=BakeoffConfig)

    #: folder the manifest was read from; relative paths resolve against it
    root: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _task_defaults(self) -> Manifest:
        for key, value in TRAIN_DEFAULTS_BY_TASK.get(self.task.type, {}).items():
            if key not in self.train.model_fields_set:
                setattr(self.train, key, value)
        return self

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.root / p)


def _key_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _bakeoff_problems(m: Manifest) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    b = m.bakeoff
    if b.metric is not None and b.metric not in metric_names(m.task.type, configured=False):
        problems.append(("bakeoff.metric", f"{b.metric!r} is not a {m.task.type} metric"))
    base = m.train.model_dump()
    for key, values in b.space.items():
        where = f"bakeoff.space.{key}"
        if key not in TrainConfig.model_fields or key in SPACE_KEYS_EXCLUDED:
            problems.append((where, "not a train: setting a bake-off can vary"))
            continue
        if isinstance(values, list) and not values:
            problems.append((where, "an empty list of choices"))
            continue
        if isinstance(values, RangeSpec) and (values.low >= values.high or (values.log and values.low <= 0)):
            problems.append((where, "a range needs low < high (and low > 0 with log: true)"))
            continue
        tried = values if isinstance(values, list) else [values.low, values.high]
        for v in tried:
            try:
                TrainConfig.model_validate({**base, key: round(v) if getattr(values, "integer", False) else v})
            except ValidationError as exc:
                problems.append((where, f"{v!r}: {exc.errors()[0]['msg']}"))
                break
    return problems


def _semantic_problems(m: Manifest) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    t = m.task
    if t.type == "classification":
        if not t.labels:
            problems.append(("task.labels", "classification needs the list of allowed labels (or auto)"))
        elif isinstance(t.labels, list) and len(set(t.labels)) != len(t.labels):
            problems.append(("task.labels", "labels must be unique"))
        elif isinstance(t.labels, list) and len(t.labels) < 2:
            problems.append(("task.labels", "classification needs at least two labels"))
    if t.type == "extraction":
        if not t.fields:
            problems.append(("task.fields", "extraction needs the list of JSON fields to extract (or auto)"))
        elif isinstance(t.fields, list) and not set(t.required) <= set(t.fields):
            missing = ", ".join(sorted(set(t.required) - set(t.fields)))
            problems.append(("task.required", f"{missing} not in task.fields"))
    if t.type != "extraction" and t.answer != "auto":
        problems.append(("task.answer", "json / inline answers are for extraction tasks; leave it auto"))
    if m.export.gguf and not m.export.merged:
        problems.append(("export.gguf", "GGUF files are made from the merged weights: set export.merged: true"))
    if m.eval.judge is not None and m.eval.judge.endpoint not in m.eval.endpoints:
        problems.append(("eval.judge.endpoint", f"{m.eval.judge.endpoint!r} is not a key of eval.endpoints"))
    known = metric_names(t.type)
    listed = ", ".join(known)
    for i, gate in enumerate(m.eval.gates):
        if gate.metric not in known:
            problems.append((f"eval.gates[{i}].metric", f"{gate.metric!r} is not a {t.type} metric ({listed})"))
    for metric in m.eval.metrics:
        if metric not in known:
            problems.append(("eval.metrics", f"{metric!r} is not a {t.type} metric ({listed})"))
    es = m.train.early_stopping
    if es is not None and es.metric != "val_loss" and es.metric not in metric_names(t.type, configured=False):
        problems.append(
            ("train.early_stopping.metric", f"{es.metric!r} is not val_loss or a {t.type} metric ({listed})")
        )
    problems.extend(_bakeoff_problems(m))
    if t.type != "classification" and m.train.rebalance != "none":
        problems.append(("train.rebalance", "class rebalancing needs a classification task; use none"))
    if t.type != "classification" and m.eval.mode == "rank":
        problems.append(("eval.mode", "rank works for classification only; use generate"))
    if m.data.split.validation + m.data.split.gold >= 0.9:
        problems.append(("data.split", "validation + gold leave less than 10% of rows for training"))
    needed = math.ceil(2 / m.monitor.alpha)  # two input tests share alpha (Bonferroni)
    if m.monitor.permutations < needed:
        problems.append(
            (
                "monitor.permutations",
                f"{m.monitor.permutations} permutations cannot reach p < alpha/2; use at least {needed}",
            )
        )
    for i, src in enumerate(m.data.sources):
        if src.header is False and not src.columns:
            problems.append((f"data.sources[{i}].columns", "a file without a header needs column names"))
        if src.delimiter is not None and len(src.delimiter) != 1:
            problems.append((f"data.sources[{i}].delimiter", "must be a single character"))
    return problems


def parse_manifest(raw: Any, root: Path = Path(".")) -> Manifest:
    """Validate a loaded YAML document; raise ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(
            "slmloop.yaml must be a mapping of sections (project, task, data, …)",
            hint="Start from `slmloop init DIR` and edit the generated file.",
            problems=[("", "the document is not a mapping")],
        )
    problems: list[tuple[str, str]] = []
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            key = _key_path(err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; `slmloop init` shows every known key)"
            elif err["type"] == "missing":
                msg = "required key is missing"
            elif "input" in err and not isinstance(err["input"], dict | list):
                msg = f"{msg} (got {err['input']!r})"
            problems.append((key, msg))
        manifest = None
    if manifest is not None:
        problems.extend(_semantic_problems(manifest))
    if problems:
        lines = "\n".join(f"  {k or '<root>'}: {v}" for k, v in problems)
        raise ConfigError(
            f"slmloop.yaml has {len(problems)} problem(s):\n{lines}",
            hint="Fix the keys above; `slmloop validate` re-checks the file.",
            problems=problems,
        )
    assert manifest is not None
    manifest.root = root
    return manifest


def load_eval_pack(path: str | Path) -> EvalConfig:
    """A standalone eval pack: a YAML file with the keys of the manifest's ``eval:`` section."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"eval pack {p} does not exist", hint="Pass the path of a YAML file.")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        return EvalConfig.model_validate(raw.get("eval", raw))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}", hint="Check the indentation.") from None
    except ValidationError as exc:
        problems = [(f"eval.{_key_path(e['loc'])}", e["msg"]) for e in exc.errors()]
        lines = "\n".join(f"  {k}: {v}" for k, v in problems)
        raise ConfigError(
            f"eval pack {p} has {len(problems)} problem(s):\n{lines}", hint="Fix those keys.", problems=problems
        ) from None


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate ``slmloop.yaml`` (a file or the folder that holds it)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.exists():
        raise ConfigError(
            f"no {MANIFEST_NAME} at {p.parent.resolve()}",
            hint="Run `slmloop init DIR` to create a project, or pass --project DIR.",
        )
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not UTF-8 text: {exc}", hint="Save the file as UTF-8.") from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        raise ConfigError(
            f"{p} is not valid YAML{where}: {getattr(exc, 'problem', exc)}",
            hint="Check indentation and quoting around that line.",
            problems=[("", f"YAML syntax error{where}")],
        ) from None
    return parse_manifest(raw, root=p.parent.resolve())
