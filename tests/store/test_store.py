from __future__ import annotations

import os
from pathlib import Path

import pytest

from slmloop.errors import NotFoundError
from slmloop.store import Event, GoldVersion, ObjectStore, Run, Store, atomic_dir, atomic_write_text


def test_object_store_is_content_addressed(tmp_path: Path) -> None:
    objs = ObjectStore(tmp_path)
    a = objs.put_jsonl([{"x": 1}, {"y": "é"}])
    b = objs.put_jsonl([{"x": 1}, {"y": "é"}])
    assert a == b and len(a) == 64
    assert objs.read_jsonl(a) == [{"x": 1}, {"y": "é"}]
    assert objs.path(a).parent.name == a[:2]


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "f.txt", "one")
    atomic_write_text(tmp_path / "f.txt", "two")
    assert (tmp_path / "f.txt").read_text() == "two"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_atomic_dir_appears_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "release"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("crash in the middle")
    assert not target.exists() and os.listdir(tmp_path) == []
    with atomic_dir(target) as tmp:
        (tmp / "whole.bin").write_bytes(b"x")
    assert (target / "whole.bin").exists()


def test_store_logs_events_and_raises_not_found(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    store.add(GoldVersion(id="gold-1", object="0" * 64, rows=3), "gold.freeze", note="hi")
    events = store.events()
    assert isinstance(events[0], Event) and events[0].kind == "gold.freeze" and events[0].payload == {"note": "hi"}
    assert events[0].subject == "gold-1"
    with pytest.raises(NotFoundError, match="run 7 does not exist"):
        store.get(Run, 7, "run", "hint")
    # a second connection sees committed state (WAL, separate engine)
    other = Store(f"sqlite:///{tmp_path / 'm.db'}")
    assert other.get(GoldVersion, "gold-1", "gold", "").rows == 3


def test_runs_must_reference_a_dataset_version(tmp_path: Path) -> None:
    from sqlalchemy.exc import IntegrityError

    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(IntegrityError):
        store.add(Run(dataset_id="ds-missing", gold_id="gold-x", base_model="m"))
