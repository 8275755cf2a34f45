from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slmloop.cli import main
from tests.conftest import write_project
from tests.tiny import toy_rows

COMMANDS = ["init", "validate", "data", "train", "eval", "export", "serve", "monitor", "demo"]


def test_help_lists_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for cmd in COMMANDS:
        assert f" {cmd} " in text


def test_help_does_not_import_torch() -> None:
    code = "import sys; from slmloop.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_validate_names_every_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "slmloop.yaml").write_text(
        yaml.safe_dump(
            {
                "task": {"type": "classification", "labels": ["a", "b"]},
                "train": {"epochz": 2, "batch_size": "big"},
            }
        )
    )
    assert main(["validate", "-p", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "train.epochz" in err and "unknown key" in err
    assert "train.batch_size" in err and "big" in err


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "p"), "--example", "sms-spam"]) == 0
    assert main(["validate", "-p", str(tmp_path / "p")]) == 0
    assert "OK" in capsys.readouterr().out


def test_import_reports_each_rejected_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_project(tmp_path / "p", "unused", toy_rows(5))
    bad = root / "data" / "bad.csv"
    bad.write_bytes(b'text,label\nfine row,ham\n"unclosed "quote,spam\nno label column\nbad \xff byte,ham\n')
    assert main(["data", "import", str(bad), "-p", str(root)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "rows read 4 = accepted 1 + rejected 3" in out
    for needle in ("bad.csv:3", "bad_csv", "bad.csv:4", "wrong_field_count", "bad.csv:5", "decode_error"):
        assert needle in out
    assert main(["data", "rejects", "-p", str(root)]) != 0  # no dataset version yet: a clear error
    assert "Error:" in capsys.readouterr().err


def test_errors_are_one_line_and_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "-p", str(tmp_path)]) == 2  # no manifest
    err = capsys.readouterr().err
    assert err.startswith("Error:") and "slmloop init" in err
    root = write_project(tmp_path / "p", "unused", toy_rows(5))
    assert main(["eval", "show", "eval-9", "-p", str(root)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--epochs", "lots", "-p", str(root)]) == 2  # bad option type: usage error


def test_missing_model_path_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_project(tmp_path / "p", str(tmp_path / "no-model-here"), toy_rows(60))
    assert main(["data", "import", "-p", str(root)]) == 0
    assert main(["data", "prepare", "-p", str(root)]) == 0
    assert main(["train", "-p", str(root)]) == 1
    err = capsys.readouterr().err
    assert "no-model-here" in err and "hint:" in err
