"""A project: a folder with ``slmloop.yaml`` and a ``.slmloop/`` store beside it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from slmloop.errors import ConfigError
from slmloop.manifest import MANIFEST_NAME, Manifest, TaskConfig, load_manifest
from slmloop.store import DatasetVersion, ObjectStore, Store, atomic_write_text

__all__ = ["EXAMPLES", "STORE_DIR", "Initialized", "Project", "init_project", "open_project", "render_manifest"]

STORE_DIR = ".slmloop"
EXAMPLES_DIR = Path(__file__).parent / "examples"
EXAMPLES = {"sms-spam": EXAMPLES_DIR / "sms_spam"}


@dataclass
class Project:
    root: Path
    manifest: Manifest
    store: Store

    @property
    def home(self) -> Path:
        return self.root / STORE_DIR

    @property
    def objects(self) -> ObjectStore:
        return ObjectStore(self.home / "objects")

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def releases_dir(self) -> Path:
        return self.home / "releases"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def bakeoffs_dir(self) -> Path:
        return self.home / "bakeoffs"

    @property
    def task(self) -> TaskConfig:
        """The manifest's task, with ``labels: auto`` / ``fields: auto`` as the current dataset version read them."""
        task = self.manifest.task
        if not task.unresolved:
            return task
        head = self.store.get_meta("current_dataset")  # the version `data prepare` made current
        latest = None
        if head is not None:
            with self.store.session() as s:
                latest = s.get(DatasetVersion, head)
        latest = latest or self.store.latest(DatasetVersion, DatasetVersion.created_at)
        if latest is None or "task" not in latest.config:
            what = "task.labels" if task.labels == "auto" else "task.fields"
            raise ConfigError(
                f"{what} is auto: it is read from the data, and there is no dataset version yet",
                hint="Run `slmloop data import FILE` and `slmloop data prepare` first.",
            )
        resolved = TaskConfig.model_validate(latest.config["task"])
        # the manifest's instruction wins: editing it must not need a new dataset version
        return resolved.model_copy(update={"instruction": task.instruction, "required": task.required})

    def locate(self, stored: str) -> Path:
        """A path kept in the store (relative to the project, so projects can move) as a Path."""
        p = Path(stored)
        return p if p.is_absolute() else self.root / p

    def relative(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return str(path.resolve())

    def close(self) -> None:
        self.store.close()


def open_project(path: str | Path = ".") -> Project:
    """Load the manifest and open (creating if needed) the project's store."""
    root = Path(path).resolve()
    if root.is_file():
        root = root.parent
    manifest = load_manifest(root / MANIFEST_NAME)
    home = root / STORE_DIR
    url = manifest.project.store_url
    if url is None:
        home.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{home / 'slmloop.db'}"
    return Project(root=root, manifest=manifest, store=Store(url))


_HEADER = """\
# slmloop project manifest. Run the loop from this folder:
#   slmloop validate && slmloop data import {first_source} && slmloop data prepare \\
#     && slmloop train && slmloop eval && slmloop export && slmloop serve
# Every key is optional unless marked; `slmloop validate` checks the file.
"""

_TASKS = {
    "classification": """\
task:
  type: classification            # required
  instruction: "{instruction}"
  labels: [{labels}]      # rows with another label are rejected (label_not_in_schema)
""",
    "extraction": """\
task:
  type: extraction                # required
  instruction: "Extract the fields as a JSON object."
  fields: [name, date, amount]    # the JSON keys the model must produce
  # answer: auto                  # how the fine-tuned model writes it: inline ([field: value] marked in the
  #                               # request; better where values are spans of it) or json; auto picks
""",
    "generation": """\
task:
  type: generation                # required
  instruction: "Answer the question."
""",
}

_REST = """\

data:
  sources:
{sources}
  normalize: true                 # NFC, control characters out, whitespace collapsed
  split:
    validation: 0.1               # watched during training (loss curve, early stopping)
    gold: 0.2                     # frozen, hash-locked, never trained on: the north star
    seed: 13
    stratify: true                # classification: same label balance in every split
    # max_rows: 2000              # seeded sample for quick experiments

model:
  base: {base}{base_note}
  max_length: 256                 # tokens; longer examples are truncated (counted in preflight)

train:                            # defaults chosen by a measured sweep (docs/training.md#the-default-recipe)
  target_modules: all-linear      # every linear layer (auto: attention only — faster per step, weaker)
  lora_layers: 0.5                # adapt the top half of the layers: faster steps (null: all layers)
  lora_r: 16                      # adapter capacity; 8-64 is typical, larger = slower
  lora_alpha: 32                  # scale = alpha / r
  lora_dropout: 0.0               # 0.05-0.1 regularises small data sets; slower steps on CPU
  prompt: compact                 # instruction only (full: + the label list / JSON keys in every row)
  learning_rate: 2.0e-3           # small models + LoRA + short runs like 1e-3..2e-3; use ~2e-4 for >=1B models
  scheduler: cosine               # cosine | linear | constant
  warmup_ratio: 0.05
  # epochs: 2                     # default 2; 3 for extraction (spans keep gaining from a third pass)
  batch_size: 32                  # larger = faster per example on CPU, more memory
  grad_accum: 1                   # effective batch = batch_size * grad_accum
  precision: auto                 # auto = bf16 where the hardware has it (AVX512-BF16, AMX, GPU)
  seed: 13

eval:
  mode: auto                      # classification: rank (label likelihood) or generate (parse)
  batch_size: 64                  # gold rows per pass: larger = faster generation, more memory
  max_new_tokens: 64

export:
  merged: true                    # write merged safetensors besides the adapter
  dtype: bf16                     # bf16 | fp16 | fp32

serve:
  host: 127.0.0.1
  port: 8000

monitor:
  embedding_model: all-minilm-l6-v2
  min_requests: 20                # fewer live requests -> verdict "insufficient"
  alpha: 0.01                     # significance level of each drift test
"""

_SMS_SOURCE = """\
    - path: data/sms_spam.tsv       # SMS Spam Collection subset (see data/SOURCE.md)
      format: tsv
      header: false
      columns: [label, text]
      quoting: false              # the messages contain unbalanced double quotes
      fields: {text: text, label: label}
"""

_GENERIC_SOURCES = {
    "classification": """\
    - path: data/train.jsonl        # one JSON object per line
      fields: {text: text, label: label}   # task field: source column
""",
    "extraction": """\
    - path: data/train.jsonl        # {"text": ..., "output": {"name": ..., ...}}
      fields: {text: text, output: output}
""",
    "generation": """\
    - path: data/train.jsonl        # {"input": ..., "output": ...}
      fields: {input: input, output: output}
""",
}


def render_manifest(
    task: str, example: str | None = None, name: str = "my-project", base: str = "smollm2-135m-instruct"
) -> str:
    if task not in _TASKS:
        raise ConfigError(f"unknown task {task!r}", hint=f"Choose one of: {', '.join(sorted(_TASKS))}.")
    if example == "sms-spam":
        task_block = _TASKS["classification"].format(
            instruction="Classify the SMS message as spam or ham. Answer with the label only.",
            labels="ham, spam",
        )
        sources = _SMS_SOURCE
        first = "data/sms_spam.tsv"
    else:
        task_block = _TASKS[task].format(instruction="Classify the text.", labels="positive, negative")
        sources = _GENERIC_SOURCES[task]
        first = "data/train.jsonl"
    head = _HEADER.format(first_source=first)
    note = "# catalog name (`slmloop models`), Hugging Face id (NAME@COMMIT pins one), or local folder"
    rest = _REST.format(sources=sources.rstrip("\n"), base=base, base_note=" " * max(1, 30 - len(base)) + note)
    return head + f"\nproject:\n  name: {name}\n\n" + task_block + rest


@dataclass(frozen=True)
class Initialized:
    manifest: Path
    base: str  # model.base as written
    hub: bool  # a Hugging Face hub model
    pinned: bool  # its commit is in model.base


def init_project(
    directory: str | Path, task: str = "classification", example: str | None = None, base: str | None = None
) -> Initialized:
    """Write a commented manifest (and the example's data) into ``directory``. ``base``: the base model
    (a hub model is pinned to its current commit where the hub is reachable)."""
    from slmloop.models.catalog import CATALOG, hub_revision, resolve_model

    root = Path(directory)
    base = base or "smollm2-135m-instruct"
    bundled = base in CATALOG and CATALOG[base].hub_id is None  # resolved (unpacked) when first used, not here
    model = None if bundled else resolve_model(base)  # a name that means nothing is refused before any write
    hub = model is not None and model.source == "hub"
    pinned = model is not None and model.revision is not None
    if example is not None and example not in EXAMPLES:
        raise ConfigError(f"unknown example {example!r}", hint=f"Available examples: {', '.join(EXAMPLES)}.")
    if example == "sms-spam":
        task = "classification"
    target = root / MANIFEST_NAME
    if target.exists():
        raise ConfigError(
            f"{target} already exists",
            hint="Choose an empty folder, or edit the existing manifest.",
        )
    if model is not None and hub and not pinned:
        revision = hub_revision(model)
        if revision is not None:
            base, pinned = f"{base}@{revision}", True
    root.mkdir(parents=True, exist_ok=True)
    if example is not None:
        src = EXAMPLES[example]
        (root / "data").mkdir(exist_ok=True)
        shutil.copyfile(src / "sms_spam.tsv", root / "data" / "sms_spam.tsv")
        shutil.copyfile(src / "SOURCE.md", root / "data" / "SOURCE.md")
    atomic_write_text(target, render_manifest(task, example, name=root.resolve().name, base=base))
    return Initialized(target, base, hub, pinned)
