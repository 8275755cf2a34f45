from __future__ import annotations

import json

import pytest
import torch

from slmloop.models.catalog import ResolvedModel
from slmloop.models.loading import load_causal_lm
from slmloop.release.export import export_release, verify_release
from slmloop.store import Release, sha256_file

pytestmark = pytest.mark.integration  # trains the tiny model


@pytest.fixture
def project(trained_copy):
    return trained_copy


def test_release_describes_itself_and_checksums_every_file(project) -> None:
    rel = project.store.get(Release, 1, "release", "")
    folder = project.locate(rel.path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["run"] == "run-1"
    assert manifest["dataset"] == rel.dataset_id and manifest["gold"] == rel.gold_id
    for name, info in manifest["files"].items():
        assert sha256_file(folder / name) == info["sha256"]
    assert {"adapter/adapter_model.safetensors", "merged/model.safetensors"} <= set(manifest["files"])
    assert verify_release(project, rel) == []
    (folder / "merged" / "config.json").write_text("{}")
    assert verify_release(project, rel) == ["merged/config.json (checksum differs)"]


def test_merged_weights_equal_base_plus_adapter(project) -> None:
    rel = project.store.get(Release, 1, "release", "")
    merged = load_causal_lm(ResolvedModel("m", str(project.locate(rel.path) / "merged"), "local"), torch.float32)
    base = ResolvedModel("b", project.manifest.model.base, "local")
    adapted = load_causal_lm(base, torch.float32, adapter=project.locate(rel.path) / "adapter", merge=False)
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-4)


def test_versions_increase(project) -> None:
    rel = export_release(project, "run-1")
    assert rel.version == 2 and project.locate(rel.path) == project.releases_dir / "v2"
    assert [e.kind for e in project.store.events(kind="release.export")] == ["release.export"] * 2


def test_an_export_recovers_from_the_folder_of_one_that_was_killed(project, capsys) -> None:
    """Killed between writing releases/v2 and recording it: the next export moves the orphan aside and
    makes a whole v2, and the CLI says so."""
    from slmloop.cli import main

    orphan = project.releases_dir / "v2"
    (orphan / "adapter").mkdir(parents=True)
    (orphan / "adapter" / "half-written.bin").write_bytes(b"\0" * 10)
    assert main(["export", "run-1", "-p", str(project.root)]) == 0
    assert "left by an export that did not finish" in capsys.readouterr().err
    rel = project.store.get(Release, 2, "release", "")
    assert (
        verify_release(project, rel) == [] and not (project.locate(rel.path) / "adapter" / "half-written.bin").exists()
    )
    (kept,) = project.releases_dir.glob(".orphan-v2-*")
    assert (kept / "adapter" / "half-written.bin").exists()  # nothing deleted that a person might want
