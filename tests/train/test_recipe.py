"""The recipe's promises: preflight, resumable checkpoints, warm starts, early stopping, multi-turn chat."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from slmloop.cli import main
from slmloop.data.importer import import_source
from slmloop.data.prepare import prepare_dataset
from slmloop.models.catalog import ResolvedModel
from slmloop.models.loading import encode_conversation, load_tokenizer, render_prompt
from slmloop.project import open_project
from slmloop.store import Run
from slmloop.train.preflight import Forecast
from slmloop.train.recipe import plan, train, train_step
from tests.conftest import write_project
from tests.tiny import toy_rows

pytestmark = pytest.mark.integration  # trains the tiny model


def _prepared(root: Path, model: Path, rows: list[dict] | None = None, **train_cfg) -> Path:
    root = write_project(root, model, rows or toy_rows(160), train=train_cfg)
    p = open_project(root)
    import_source(p, p.manifest.data.sources[0])
    prepare_dataset(p)
    p.close()
    return root


def answer_loss_and_grads(parts: Any, ids: list[int]) -> tuple[float, dict[str, torch.Tensor]]:
    """The training loss of rows ``ids`` and the adapter's gradients from it (then cleared)."""
    loss, _ = parts.inner_loss(parts.batch(ids))
    loss.backward()
    grads = {n: q.grad.clone() for n, q in parts.model.named_parameters() if q.requires_grad}
    parts.inner_loss.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def _adapter(root: Path, run: str = "run-1") -> dict[str, torch.Tensor]:
    return load_file(root / ".slmloop" / "runs" / run / "adapter" / "adapter_model.safetensors")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_dry_run_forecasts_without_training(tmp_path: Path, tiny_model: Path) -> None:
    root = _prepared(tmp_path / "p", tiny_model)
    p = open_project(root)
    f = plan(p)
    assert isinstance(f, Forecast)
    assert f.trainable_params > 0 and f.total_params > f.trainable_params
    assert f.calibrated_tokens_per_s > 0 and f.seconds_total > 0 and f.fits
    assert 0 < f.peak_memory_gib < f.available_memory_gib
    assert f.leakage == "clean" and f.steps == f.steps_per_epoch
    assert not p.store.list(Run)  # nothing was started
    assert main(["train", "--dry-run", "-p", str(root)]) == 0
    p.close()


def test_preflight_refuses_a_run_that_will_not_fit(tmp_path: Path, tiny_model: Path, monkeypatch) -> None:
    import slmloop.train.recipe as recipe

    root = _prepared(tmp_path / "p", tiny_model)
    monkeypatch.setattr(recipe, "available_memory_bytes", lambda device: 1024)  # a machine with 1 KiB free
    p = open_project(root)
    from slmloop.errors import PreflightError

    with pytest.raises(PreflightError) as exc:
        train(p)
    assert "GiB at its peak" in exc.value.message and "max_batch_tokens" in (exc.value.hint or "")
    assert not p.store.list(Run)
    p.close()


def test_killed_run_resumes_to_the_same_adapter(tmp_path: Path, tiny_model: Path) -> None:
    """SIGKILL a real training process after its first checkpoint; --resume must end where an uninterrupted
    run with the same seed ends."""
    settings = {"max_steps": 120, "checkpoint_every": 10, "batch_size": 4, "eval_every": 40}
    killed = _prepared(tmp_path / "killed", tiny_model, **settings)
    clean = _prepared(tmp_path / "clean", tiny_model, **settings)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "slmloop", "train", "-p", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts = killed / ".slmloop" / "runs" / "run-1" / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpts.exists() and any((c / "loop.json").exists() for c in ckpts.glob("step-*")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    p = open_project(killed)
    assert p.store.get(Run, 1, "run", "").status == "running"  # killed: nobody marked it
    assert not (killed / ".slmloop" / "runs" / "run-1" / "adapter").exists()
    with (killed / ".slmloop/runs/run-1/trace.jsonl").open("a") as torn:  # the kill cut a line in half
        torn.write('{"step": 7, "lo')
    holder = killed / ".slmloop/runs/run-1/holder.json"
    assert json.loads(holder.read_text())["pid"] == proc.pid  # the killed process: dead, so the run is free
    alive = holder.read_text().replace(str(proc.pid), str(os.getpid()))
    holder.write_text(alive)  # as if another process were training it now
    assert main(["train", "--resume", "run-1", "-p", str(killed)]) == 4
    holder.write_text(alive.replace(str(os.getpid()), str(proc.pid)))
    assert main(["train", "--resume", "run-1", "-p", str(killed)]) == 0
    assert not holder.exists()  # released when the run ended
    resumed = p.store.get(Run, 1, "run", "")
    assert resumed.status == "completed" and resumed.metrics["steps"] == 120
    assert any(e.kind == "train.resume" for e in p.store.events())
    trace = [json.loads(x) for x in (killed / ".slmloop/runs/run-1/trace.jsonl").read_text().splitlines()]
    assert [t["step"] for t in trace] == list(range(1, 121))  # no step lost or repeated
    assert main(["train", "-p", str(clean)]) == 0
    assert _max_diff(_adapter(killed), _adapter(clean)) <= 1e-5
    p.close()


def test_resume_refuses_a_completed_run(tmp_path: Path, tiny_model: Path, capsys) -> None:
    root = _prepared(tmp_path / "p", tiny_model, max_steps=2)
    assert main(["train", "-p", str(root)]) == 0
    assert main(["train", "--resume", "run-1", "-p", str(root)]) == 2
    assert "already completed" in capsys.readouterr().err


def test_warm_start_continues_from_an_earlier_adapter(tmp_path: Path, tiny_model: Path) -> None:
    root = _prepared(tmp_path / "p", tiny_model, max_steps=20)
    assert main(["train", "-p", str(root)]) == 0
    assert main(["train", "--init-from", "run-1", "--max-steps", "1", "--learning-rate", "1e-12", "-p", str(root)]) == 0
    first, second = _adapter(root, "run-1"), _adapter(root, "run-2")
    assert _max_diff(first, second) < 1e-6  # one near-zero step away from where run-1 ended
    p = open_project(root)
    run2 = p.store.get(Run, 2, "run", "")
    assert run2.config["init_from"].endswith("run-1/adapter")
    fresh = train(p, {"max_steps": 1, "learning_rate": 1e-12})
    assert _max_diff(first, _adapter(root, fresh.name)) > 1e-3  # without the warm start: a fresh adapter
    p.close()


def test_early_stopping_keeps_the_best_checkpoint(tmp_path: Path, tiny_model: Path) -> None:
    root = write_project(
        tmp_path / "p",
        tiny_model,
        toy_rows(160),
        train={
            "max_steps": 40,
            "eval_every": 2,
            "learning_rate": 0.3,
            "scheduler": "constant",
            "warmup_ratio": 0.0,
            "early_stopping": {"metric": "val_loss", "patience": 2},
        },
    )
    p = open_project(root)
    import_source(p, p.manifest.data.sources[0])
    prepare_dataset(p)
    run = train(p)
    m = run.metrics
    assert m["stopped_early"] and m["steps"] < 40
    assert m["selected"].startswith("best") and m["best_step"] < m["steps"]
    best = load_file(p.locate(run.path) / "checkpoints" / "best.safetensors")
    saved = _adapter(root)
    assert len(saved) == len(best)
    for key, tensor in saved.items():  # PEFT drops the adapter name from the keys it saves
        match = [v for k, v in best.items() if k.replace(".default", "").endswith(key.split("base_model.")[-1])]
        assert match and torch.equal(match[0], tensor)
    p.close()


def test_tensorboard_reporting(tmp_path: Path, tiny_model: Path) -> None:
    root = _prepared(tmp_path / "p", tiny_model, max_steps=3, report_to=["tensorboard"])
    assert main(["train", "-p", str(root)]) == 0
    events = list((root / ".slmloop" / "runs" / "run-1" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100


def test_multi_turn_chat_puts_loss_on_every_assistant_turn(tiny_model: Path) -> None:
    tok = load_tokenizer(ResolvedModel("t", str(tiny_model), "local"))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "book a room"},
        {"role": "assistant", "content": "done"},
    ]
    ex = encode_conversation(tok, messages, max_length=256)
    assert len(ex.spans) == 2
    for (start, end), i in zip(ex.spans, (2, 4), strict=True):
        assert tok.decode(ex.input_ids[start : end - 1]).strip() == messages[i]["content"]
        assert ex.input_ids[end - 1] == tok.eos_token_id
        prefix = tok(render_prompt(tok, messages[:i]), add_special_tokens=False)["input_ids"]
        assert ex.input_ids[:start] == prefix  # each answer sees exactly the context inference gives it


@pytest.mark.integration
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path: Path, tiny_model: Path) -> None:
    settings = {"max_steps": 4, "batch_size": 4, "eval_every": 4, "warmup_ratio": 0.0}
    two = _prepared(tmp_path / "two", tiny_model, **settings)
    one = _prepared(tmp_path / "one", tiny_model, **settings, grad_accum=2)
    res = subprocess.run(
        [sys.executable, "-m", "slmloop", "train", "--num-processes", "2", "-p", str(two)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert main(["train", "-p", str(one)]) == 0
    p = open_project(two)
    run = p.store.get(Run, 1, "run", "")
    assert run.status == "completed" and run.metrics["world_size"] == 2
    p.close()
    diff = _max_diff(_adapter(two), _adapter(one))
    assert diff < 1e-4, diff
    assert _max_diff(_adapter(two), {k: torch.zeros_like(v) for k, v in _adapter(two).items()}) > 1e-3


def test_early_stopping_on_a_task_metric(tmp_path: Path, tiny_model: Path) -> None:
    root = write_project(
        tmp_path / "p",
        tiny_model,
        toy_rows(120),
        train={"max_steps": 6, "eval_every": 2, "early_stopping": {"metric": "accuracy", "patience": 5}},
    )
    p = open_project(root)
    import_source(p, p.manifest.data.sources[0])
    prepare_dataset(p)
    run = train(p)
    trace = [json.loads(x) for x in (p.locate(run.path) / "trace.jsonl").read_text().splitlines()]
    evals = [t for t in trace if "accuracy" in t]
    assert [t["step"] for t in evals] == [2, 4, 6] and all(0 <= t["accuracy"] <= 1 for t in evals)
    assert run.metrics["best_value"] == max(t["accuracy"] for t in evals)
    p.close()


def test_one_training_step_alone(tmp_path: Path, tiny_model: Path) -> None:
    """train_step: the mean loss over the step's answer tokens, and an update of the adapter only."""
    from slmloop.train.recipe import build, setup, validation_loss

    p = open_project(_prepared(tmp_path / "p", tiny_model, batch_size=4))
    st = setup(p)
    parts = build(st)
    lengths = [len(e.input_ids) for e in parts.train_ex]
    group = [[0, 1, 2, 3], [4, 5]]
    examples = [parts.train_ex[i] for b in group for i in b]
    answer_tokens = sum(end - start for e in examples for start, end in e.spans)
    # what the step must report: the loss of these rows before the update, per answer token
    before = validation_loss(parts.inner_loss, examples, parts.tokenizer.pad_token_id, 10_000, parts.device)
    weights = {k: v.detach().clone() for k, v in parts.model.named_parameters() if v.requires_grad}
    frozen = {k: v.detach().clone() for k, v in parts.model.named_parameters() if not v.requires_grad}
    parts.model.train()
    result = train_step(parts, group, lengths, st.config)
    train_step(parts, [[6, 7]], lengths, st.config)  # the warm-up schedule starts at lr 0: a second step moves
    assert result.answer_tokens == answer_tokens
    assert result.loss_sum / result.answer_tokens == pytest.approx(before, rel=1e-4)
    assert result.real_tokens == sum(len(e.input_ids) for e in examples) and result.grad_norm > 0
    now = dict(parts.model.named_parameters())
    assert any(not torch.equal(now[k], v) for k, v in weights.items())  # the adapter moved
    assert all(torch.equal(now[k], v) for k, v in frozen.items())  # nothing else did
    p.close()


def test_kept_states_of_frozen_layers_give_the_full_passs_loss_and_gradients(tmp_path: Path, tiny_model: Path) -> None:
    """With LoRA on the top layer only, a second pass of the same rows starts above the frozen bottom layer:
    same loss and adapter gradients as the whole model, with and without a shared prompt prefix, also when a
    row's states were kept from a batch of other rows; then a 2-epoch run uses them and learns."""
    from slmloop.train.recipe import build, setup

    root = _prepared(tmp_path / "p", tiny_model, batch_size=8, lora_layers=1, epochs=2)
    p = open_project(root)
    parts = build(setup(p))
    frozen = parts.inner_loss.frozen
    assert frozen is not None and frozen.start == 1  # 2 layers, the top one adapted

    def loss_and_grads(ids: list[int]) -> tuple[float, dict[str, torch.Tensor]]:
        return answer_loss_and_grads(parts, ids)

    for ids in ([0, 1, 2, 3, 4, 5], [7], [0, 7, 9]):  # shared prefix; one row alone (none); rows kept elsewhere
        kept_before = frozen.skipped
        frozen.forget(9)
        full_loss, full_grads = loss_and_grads(ids)  # row 9 is missing: the whole model runs (and keeps states)
        assert frozen.skipped == kept_before and frozen.covers(ids)
        kept_loss, kept_grads = loss_and_grads(ids)
        assert frozen.skipped == kept_before + len(ids)  # this pass started above the frozen layer
        assert kept_loss == pytest.approx(full_loss, rel=1e-5)
        for name, g in full_grads.items():
            assert torch.allclose(kept_grads[name], g, rtol=1e-4, atol=1e-6), name
    assert parts.batch([0, 7]).prefix_len > 0 and parts.batch([7]).prefix_len == 0
    p.close()

    p = open_project(root)
    run = train(p)
    assert run.metrics["frozen_layers"] == 1
    n_train = len(parts.train_ex)
    assert run.metrics["rows_from_kept_states"] >= n_train  # the whole second epoch
    assert run.metrics["train_loss_last"] < run.metrics["train_loss_first"]
    p.close()


def test_calibration_meets_the_heaviest_batches_again_after_the_others() -> None:
    """The peak a run reaches comes on a heap other shapes have cut up: the heaviest pass twice, last after them."""
    from types import SimpleNamespace

    from slmloop.train.preflight import calibrate, current_rss_bytes

    seen: list[tuple[int, ...]] = []
    rss_in_passes: list[int] = []

    def make_batch(chunk: list[int]) -> SimpleNamespace:
        seen.append(tuple(chunk))
        return SimpleNamespace(x=torch.randn(len(chunk), 8), real_tokens=len(chunk))

    class Loss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(8, 8)

        def forward(self, batch: SimpleNamespace) -> tuple[torch.Tensor, int]:
            rss_in_passes.append(current_rss_bytes())
            return self.layer(batch.x).pow(2).sum(), batch.real_tokens

    heavy, chunks = [[0, 1, 2, 3], [4, 5, 6]], [[7], [8, 9]]
    loss_fn = Loss()
    tps, peak = calibrate(loss_fn, make_batch, chunks, heavy, torch.device("cpu"))
    assert seen == [(0, 1, 2, 3), (4, 5, 6), (7,), (8, 9), (0, 1, 2, 3), (4, 5, 6)]
    assert tps > 0 and peak >= max(rss_in_passes)  # the high-water mark of every pass, not of the first few
    assert loss_fn.layer.weight.grad is None  # nothing accumulates between passes


class _Planted:
    """A pickled object that runs code when unpickled (what a tampered checkpoint could hold)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def test_a_checkpoint_runs_no_code_when_it_is_loaded(tmp_path: Path) -> None:
    import torch

    from slmloop.errors import StoreError
    from slmloop.train.checkpoint import LoopState, restore_checkpoint, save_checkpoint

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    ckpt = save_checkpoint(tmp_path, model, optimizer, scheduler, LoopState(step=3))
    assert restore_checkpoint(ckpt, model, optimizer, scheduler).step == 3  # a checkpoint of ours loads
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": _Planted(marker)}, ckpt / "state.pt")
    with pytest.raises(StoreError, match="damaged"):
        restore_checkpoint(ckpt, model, optimizer, scheduler)
    assert not marker.exists()
