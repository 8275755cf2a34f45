from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.tiny import build_tiny_model, toy_rows

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def write_project(root: Path, base: Path | str, rows: list[dict], **sections: dict) -> Path:
    """A classification project over ``rows`` (JSONL), with the given manifest sections merged in."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    with open(root / "data" / "train.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    manifest = {
        "project": {"name": "toy"},
        "task": {
            "type": "classification",
            "instruction": "Classify the SMS message as spam or ham.",
            "labels": ["ham", "spam"],
        },
        "data": {
            "sources": [{"path": "data/train.jsonl"}],
            "split": {"validation": 0.1, "gold": 0.2, "seed": 1},
            # paraphrase measurement loads MiniLM: the tests that are about it turn it on
            "leakage": {"semantic": "off"},
        },
        "model": {"base": str(base), "max_length": 64},
        "train": {
            "batch_size": 8,
            "epochs": 1,
            "learning_rate": 5e-3,
            "lora_r": 4,
            "lora_alpha": 8,
            # the tiny model has 2 layers: adapt every linear layer of both (the shipped default: the top half);
            # attention alone is too little capacity for a random 2-layer model to learn the toy task reliably
            "target_modules": "all-linear",
            "lora_layers": None,
            "precision": "fp32",
            "seed": 0,
        },
        # the cheap-baseline gate has its own tests (a toy task is a TF-IDF task)
        "eval": {"batch_size": 16, "max_new_tokens": 4, "precision": "fp32", "compare": {"baseline": "none"}},
        "monitor": {"min_requests": 5, "permutations": 300, "reference_size": 100, "alpha": 0.01},
    }
    for key, value in sections.items():
        manifest[key] = {**manifest.get(key, {}), **value}
    (root / "slmloop.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return root


def write_extraction_project(root: Path, base: Path | str, rows: list[dict], max_length: int, **sections: dict) -> Path:
    """An extraction project ("Extract the place.", fields: auto) over ``rows``; answers of up to 12 tokens."""
    return write_project(
        root,
        base,
        rows,
        task={"type": "extraction", "instruction": "Extract the place.", "labels": None, "fields": "auto"},
        model={"max_length": max_length},
        eval={"max_new_tokens": 12},
        serve={"max_new_tokens": 12},
        **sections,
    )


@pytest.fixture
def toy_project(tmp_path: Path, tiny_model: Path) -> Path:
    return write_project(tmp_path / "proj", tiny_model, toy_rows(120))


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A toy project taken through import → prepare → train → export (read-only for tests)."""
    from slmloop.data.importer import import_source
    from slmloop.data.prepare import prepare_dataset
    from slmloop.project import open_project
    from slmloop.release.export import export_release
    from slmloop.train.recipe import train

    root = write_project(
        tmp_path_factory.mktemp("trained") / "proj",
        tiny_model,
        toy_rows(200),
        train={"epochs": 4},
        export={"dtype": "fp32"},
    )
    p = open_project(root)
    import_source(p, p.manifest.data.sources[0])
    prepare_dataset(p)
    run = train(p)
    export_release(p, run.name)
    p.close()
    return root


@pytest.fixture
def trained_copy(trained_project: Path, tmp_path: Path):
    """A writable copy of the trained toy project, opened."""
    import shutil

    from slmloop.project import open_project

    root = tmp_path / "copy"
    shutil.copytree(trained_project, root)
    p = open_project(root)
    yield p
    p.close()
