from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slmloop.errors import ConfigError
from slmloop.manifest import load_manifest, parse_manifest
from slmloop.project import init_project, render_manifest

MINIMAL = {"task": {"type": "classification", "labels": ["a", "b"]}}


def test_minimal_manifest_fills_documented_defaults() -> None:
    m = parse_manifest(MINIMAL)
    assert m.model.base == "smollm2-135m-instruct"
    assert m.train.precision == "auto"
    assert m.eval.mode == "auto"
    assert m.data.split.gold == 0.2


def test_extraction_trains_three_epochs_by_default_unless_the_manifest_says() -> None:
    extraction = {"task": {"type": "extraction", "instruction": "Extract.", "fields": ["city"]}}
    assert parse_manifest(MINIMAL).train.epochs == 2.0  # classification
    assert parse_manifest(extraction).train.epochs == 3.0
    assert parse_manifest({**extraction, "train": {"epochs": 1}}).train.epochs == 1.0
    assert parse_manifest({**extraction, "train": {"lora_r": 8}}).train.epochs == 3.0


def test_unknown_key_and_wrong_type_are_both_reported() -> None:
    raw = {**MINIMAL, "train": {"learning_rat": 0.1, "batch_size": "sixteen"}}
    with pytest.raises(ConfigError) as exc:
        parse_manifest(raw)
    keys = dict(exc.value.problems)
    assert "train.learning_rat" in keys and "unknown key" in keys["train.learning_rat"]
    assert "train.batch_size" in keys and "sixteen" in keys["train.batch_size"]
    assert exc.value.exit_code == 2


def test_semantic_problems_name_their_keys() -> None:
    raw = {
        "task": {"type": "classification"},
        "eval": {"mode": "rank"},
        "data": {"sources": [{"path": "x.tsv", "header": False}], "split": {"gold": 0.5, "validation": 0.45}},
    }
    with pytest.raises(ConfigError) as exc:
        parse_manifest(raw)
    keys = [k for k, _ in exc.value.problems]
    assert "task.labels" in keys
    assert "data.split" in keys
    assert "data.sources[0].columns" in keys


def test_too_few_permutations_for_alpha() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_manifest({**MINIMAL, "monitor": {"alpha": 0.01, "permutations": 100}})
    assert [k for k, _ in exc.value.problems] == ["monitor.permutations"]


def test_rank_mode_needs_classification() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_manifest({"task": {"type": "generation"}, "eval": {"mode": "rank"}})
    assert [k for k, _ in exc.value.problems] == ["eval.mode"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "slmloop.yaml").write_text("task:\n  type: classification\n labels: [a\n")
    with pytest.raises(ConfigError) as exc:
        load_manifest(tmp_path)
    assert "line" in exc.value.message


def test_missing_manifest_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_manifest(tmp_path)
    assert "slmloop init" in (exc.value.hint or "")


@pytest.mark.parametrize("task", ["classification", "extraction", "generation"])
def test_every_shipped_template_validates(task: str) -> None:
    text = render_manifest(task)
    assert text.startswith("# slmloop project manifest. Run the loop")
    m = parse_manifest(yaml.safe_load(text))
    assert m.task.type == task


def test_example_project_validates_and_ships_its_data(tmp_path: Path) -> None:
    path = init_project(tmp_path / "p", example="sms-spam").manifest
    m = load_manifest(path)
    src = m.data.sources[0]
    assert m.resolve(src.path).exists()
    assert (tmp_path / "p" / "data" / "SOURCE.md").exists()
    assert src.quoting is False and src.columns == ["label", "text"]


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    init_project(tmp_path)
    with pytest.raises(ConfigError):
        init_project(tmp_path)


def test_lora_layers_is_a_count_or_a_share_of_the_top_layers() -> None:
    from slmloop.train.recipe import adapted_layers

    assert [adapted_layers(x, 30) for x in (None, 15, 0.5, 1.0, 40, 0.01)] == [30, 15, 15, 30, 30, 1]
    with pytest.raises(ConfigError, match=r"train\.lora_layers"):
        parse_manifest({"task": {"type": "generation"}, "train": {"lora_layers": 0}})
