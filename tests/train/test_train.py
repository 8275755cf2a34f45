"""The recipe on the tiny model: loss falls, only the adapter changes, the run describes itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slmloop.data.importer import import_source
from slmloop.data.prepare import prepare_dataset
from slmloop.errors import LeakageError
from slmloop.project import open_project
from slmloop.train.recipe import train
from tests.conftest import write_project
from tests.tiny import toy_rows

pytestmark = pytest.mark.integration  # trains the tiny model


def _prepared(root: Path, model: Path, rows: list[dict], **train_cfg):
    p = open_project(write_project(root, model, rows, train=train_cfg))
    import_source(p, p.manifest.data.sources[0])
    prepare_dataset(p)
    return p


def test_training_lowers_loss_and_changes_only_the_adapter(tmp_path: Path, tiny_model: Path) -> None:
    p = _prepared(tmp_path / "p", tiny_model, toy_rows(160), epochs=6)
    run = train(p)
    m = run.metrics
    assert run.status == "completed"
    assert m["train_loss_last"] < 0.5 * m["train_loss_first"]
    assert m["val_loss"] < m["val_loss_first"]
    folder = p.locate(run.path)
    adapter = load_file(folder / "adapter" / "adapter_model.safetensors")
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and all(float(t.abs().max()) > 0 for t in lora_b)  # B starts at zero: it moved
    base = load_file(tiny_model / "model.safetensors")
    assert not any("lora" in k for k in base)  # the base weights on disk are untouched
    meta = json.loads((folder / "run.json").read_text())
    assert meta["dataset"] == run.dataset_id and meta["gold"] == run.gold_id
    assert meta["train"]["lora_r"] == 4 and meta["versions"]["torch"] == torch.__version__
    assert (folder / "loss_curve.png").stat().st_size > 1000
    trace = [json.loads(line) for line in (folder / "trace.jsonl").read_text().splitlines()]
    assert len(trace) == m["steps"] and all({"loss", "lr", "tokens_per_s"} <= t.keys() for t in trace)


def test_same_seed_same_adapter(tmp_path: Path, tiny_model: Path) -> None:
    a = train(_prepared(tmp_path / "a", tiny_model, toy_rows(60), max_steps=3))
    b = train(_prepared(tmp_path / "b", tiny_model, toy_rows(60), max_steps=3))
    ta = load_file(tmp_path / "a" / a.path / "adapter" / "adapter_model.safetensors")
    tb = load_file(tmp_path / "b" / b.path / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_token_budget_does_not_change_the_maths(tmp_path: Path, tiny_model: Path) -> None:
    a = train(_prepared(tmp_path / "a", tiny_model, toy_rows(60), max_steps=2))
    b = train(_prepared(tmp_path / "b", tiny_model, toy_rows(60), max_steps=2, max_batch_tokens=64))
    ta = load_file(tmp_path / "a" / a.path / "adapter" / "adapter_model.safetensors")
    tb = load_file(tmp_path / "b" / b.path / "adapter" / "adapter_model.safetensors")
    assert all(torch.allclose(ta[k], tb[k], atol=1e-5) for k in ta)


def test_leakage_gate_blocks_and_the_override_is_recorded(tmp_path: Path, tiny_model: Path) -> None:
    p = _prepared(tmp_path / "p", tiny_model, toy_rows(60), max_steps=1)
    # plant a gold row into the training split of the stored dataset version (as a bad merge would)
    from slmloop.data.versions import load_dataset
    from slmloop.store import DatasetVersion

    splits = load_dataset(p)
    leaked = [*splits.train, dict(splits.gold[0])]
    with p.store.session() as s:
        v = s.get(DatasetVersion, splits.version.id)
        v.train_object = p.objects.put_jsonl(leaked)
    with pytest.raises(LeakageError) as exc:
        train(p)
    assert "copy gold rows" in exc.value.message and "--allow-leakage" in (exc.value.hint or "")
    run = train(p, allow_leakage=True)
    assert run.config["leakage"]["overridden"] is True and run.config["leakage"]["leaks"] == 1
    override = next(e for e in p.store.events() if e.kind == "leakage.override")
    assert override.payload["leaks"] == 1 and override.payload["pairs"][0]["gold_text"] == splits.gold[0]["text"]
    assert p.store.events(limit=1)[0].kind == "train.completed"
