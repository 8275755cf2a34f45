"""The catalog: hub models by name, pinned revisions, `slmloop init --base`, `slmloop models`; and its claims
(family, GGUF) agree with what the family matrix and the GGUF exporter do."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from slmloop.cli import main
from slmloop.errors import ModelError
from slmloop.models.catalog import CATALOG, resolve_model

#: catalog family -> the tiny model of that family in the family matrix (tests/tiny.py)
TESTED = {
    "Llama": "llama",
    "Llama 3": "llama3",
    "Qwen2": "qwen2",
    "Qwen3": "qwen3",
    "Gemma 2": "gemma2",
    "Gemma 3": "gemma3",
    "Phi-3": "phi3",
    "SmolLM3": "smollm3",
}


def test_catalog_hub_models_resolve_to_their_id_with_an_optional_revision() -> None:
    ref = resolve_model("qwen2.5-0.5b-instruct")
    assert (ref.path, ref.source, ref.revision) == ("Qwen/Qwen2.5-0.5B-Instruct", "hub", None)
    ref = resolve_model("qwen2.5-0.5b-instruct@7ae5576")
    assert (ref.path, ref.revision, ref.spec) == (
        "Qwen/Qwen2.5-0.5B-Instruct",
        "7ae5576",
        "qwen2.5-0.5b-instruct@7ae5576",
    )
    ref = resolve_model("someone/their-model@v1.0")
    assert (ref.path, ref.source, ref.revision) == ("someone/their-model", "hub", "v1.0")
    with pytest.raises(ModelError, match="no revisions"):
        resolve_model("smollm2-135m-instruct@abc")
    with pytest.raises(ModelError, match="names no revision"):
        resolve_model("Qwen/Qwen3-0.6B@")


def test_every_catalog_family_is_in_the_family_matrix_and_its_gguf_claim_holds(tmp_path: Path) -> None:
    from slmloop.errors import ModelError as Refused
    from slmloop.release.gguf import ARCHITECTURES, write_gguf
    from tests.tiny import FAMILIES, build_tiny_model

    lms = [e for e in CATALOG.values() if e.kind == "causal-lm"]
    assert {e.family for e in lms} <= set(TESTED) and set(TESTED.values()) <= set(FAMILIES)
    for family in {e.family for e in lms}:
        assert family is not None
        folder = build_tiny_model(tmp_path / TESTED[family], family=TESTED[family])
        arch = yaml.safe_load((folder / "config.json").read_text())["architectures"][0]
        exports = arch in ARCHITECTURES
        assert all(e.gguf == exports for e in lms if e.family == family), family
        if not exports:
            with pytest.raises(Refused):
                write_gguf(folder, tmp_path / "x.gguf", "f16", name="x")


def test_init_base_pins_a_hub_model_to_its_current_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub

    asked = []

    def model_info(self: object, repo_id: str, timeout: float | None = None) -> SimpleNamespace:
        asked.append(repo_id)
        return SimpleNamespace(sha="0123abcd" * 5)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)  # the hub, at the network boundary
    assert main(["init", str(tmp_path / "p"), "--base", "qwen3-0.6b"]) == 0
    manifest = yaml.safe_load((tmp_path / "p" / "slmloop.yaml").read_text())
    assert manifest["model"]["base"] == "qwen3-0.6b@" + "0123abcd" * 5 and asked == ["Qwen/Qwen3-0.6B"]
    assert resolve_model(manifest["model"]["base"]).revision == "0123abcd" * 5
    assert "not pinned" not in capsys.readouterr().err


def test_init_base_without_the_hub_writes_it_unpinned_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub

    def offline(self: object, repo_id: str, timeout: float | None = None) -> None:
        raise OSError("the hub cannot be reached")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    assert main(["init", str(tmp_path / "p"), "--base", "Qwen/Qwen2.5-0.5B-Instruct"]) == 0
    assert (
        yaml.safe_load((tmp_path / "p" / "slmloop.yaml").read_text())["model"]["base"] == "Qwen/Qwen2.5-0.5B-Instruct"
    )
    assert "not pinned to a commit" in capsys.readouterr().err
    # a name that means nothing is refused before anything is written
    assert main(["init", str(tmp_path / "q"), "--base", "no-such-model"]) != 0
    assert not (tmp_path / "q" / "slmloop.yaml").exists()


def test_models_lists_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    for e in CATALOG.values():
        if e.kind == "causal-lm":
            assert e.name in text
    assert "Qwen/Qwen3-0.6B" in text and "NAME@COMMIT" in text
