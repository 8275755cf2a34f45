"""Checkpoints that let a killed run continue as if nothing had happened.

A checkpoint holds everything the next step depends on: the LoRA weights, the
optimizer and scheduler state, the RNG states, and where the loop was (epoch,
position in that epoch's batch order — the order itself is a pure function of
(seed, epoch)). Each is written into a temporary folder renamed into place, so a
kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slmloop.errors import StoreError
from slmloop.store.files import atomic_dir

__all__ = [
    "HOLDER",
    "LoopState",
    "claim_run",
    "latest_checkpoint",
    "release_run",
    "restore_checkpoint",
    "run_holder",
    "save_checkpoint",
]

KEEP = 2  # newest checkpoints kept on disk


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    position: int = 0  # index of the next batch group in this epoch's order
    real_tokens: int = 0
    compute_s: float = 0.0
    best_value: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # validation evaluations so far


def _trainable_state(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def save_checkpoint(run_dir: Path, model: Any, optimizer: Any, scheduler: Any, state: LoopState) -> Path:
    import torch
    from safetensors.torch import save_file

    target = run_dir / "checkpoints" / f"step-{state.step:07d}"
    if target.exists():
        return target
    with atomic_dir(target) as tmp:
        save_file({k: v.contiguous() for k, v in _trainable_state(model).items()}, tmp / "trainable.safetensors")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "python_rng": random.getstate(),
            },
            tmp / "state.pt",
        )
        (tmp / "loop.json").write_text(json.dumps(asdict(state), indent=1))
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    for old in checkpoints[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(run_dir: Path) -> Path | None:
    folder = run_dir / "checkpoints"
    found = sorted(p for p in folder.glob("step-*") if (p / "loop.json").exists()) if folder.exists() else []
    return found[-1] if found else None


def restore_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> LoopState:
    import torch
    from safetensors.torch import load_file

    try:
        weights = load_file(path / "trainable.safetensors")
        blob = torch.load(path / "state.pt", weights_only=True)  # tensors and plain values only: no code runs
        state = LoopState(**json.loads((path / "loop.json").read_text()))
    except Exception as exc:  # a torn, truncated or edited file: name it, never a traceback
        raise StoreError(
            f"checkpoint {path} is damaged and cannot be resumed from ({type(exc).__name__}: {exc})",
            hint=f"Delete the folder {path.name} to resume from the checkpoint before it, or start the run again.",
        ) from None
    params = dict(model.named_parameters())
    missing = [k for k in weights if k not in params]
    if missing:
        raise StoreError(
            f"checkpoint {path} does not match the model being resumed ({len(missing)} unknown weights, "
            f"e.g. {missing[0]})",
            hint="Resume with the run's own settings (no other options), or start a new run.",
        )
    with torch.no_grad():
        for k, v in weights.items():
            params[k].copy_(v)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    if blob.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    random.setstate(blob["python_rng"])
    return state


#: the file in a run folder that names the process training it
HOLDER = "holder.json"


def run_holder(run_dir: Path) -> dict[str, Any] | None:
    """The process training the run in ``run_dir`` now, if it is alive on this host (else None)."""
    import os
    import socket

    try:
        holder = json.loads((run_dir / HOLDER).read_text())
    except (OSError, ValueError):
        return None
    if holder.get("host") != socket.gethostname():
        return holder  # another machine's process: it cannot be checked from here, so it holds the run
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError, TypeError):
        return None  # it died (a crash, a kill): the run is free to resume
    except PermissionError:
        return holder  # alive, another user's
    return holder


def claim_run(run_dir: Path) -> None:
    """Record this process as the one training the run (released by :func:`release_run`)."""
    import os
    import socket

    from slmloop.store.files import atomic_write_text

    atomic_write_text(run_dir / HOLDER, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))


def release_run(run_dir: Path) -> None:
    (run_dir / HOLDER).unlink(missing_ok=True)
