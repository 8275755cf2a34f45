"""Property-based: whatever bytes arrive, import never crashes and never loses a row."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmloop.data.sources import SourceStats, read_records
from slmloop.errors import DataError
from slmloop.manifest import SourceConfig

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _read(data: bytes, suffix: str, **src):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / f"input{suffix}"
        f.write_bytes(data)
        stats = SourceStats()
        try:
            records = list(read_records(f, SourceConfig(path=str(f), **src), stats))
        except DataError as exc:  # a whole-file refusal is allowed; it must say why
            assert exc.message and exc.hint
            return None, stats
    return records, stats


def _lines(data: bytes) -> list[bytes]:
    chunks = data.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    return chunks


def _covered(records, data: bytes, header: bool) -> None:
    """Every non-blank physical line belongs to exactly one record (or is the header)."""
    lines = _lines(data)
    nonblank = {i + 1 for i, ln in enumerate(lines) if _is_row(ln)}
    seen: list[int] = []
    for r in records:
        seen.extend(range(r.line, (r.last_line or r.line) + 1))
    assert len(seen) == len(set(seen)), "a line was counted twice"
    missing = nonblank - set(seen)
    if header and nonblank:
        missing.discard(min(nonblank))  # the header line
    assert not missing, f"lines {sorted(missing)} were lost"


def _is_row(line: bytes) -> bool:
    """What counts as a row: a line that is not blank once decoded (undecodable lines are rows)."""
    try:
        return bool(line.decode("utf-8").strip())
    except UnicodeDecodeError:
        return bool(line.strip())


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_as_jsonl(data: bytes) -> None:
    records, stats = _read(data, ".jsonl")
    assert records is not None
    assert len(records) == sum(_is_row(ln) for ln in _lines(data))  # one record per row, none dropped
    assert len(records) + stats.blank_lines == len(_lines(data))
    assert all((r.fields is None) == (r.reason is not None) for r in records)
    assert {r.reason for r in records} <= {None, "decode_error", "bad_json", "not_an_object"}


@SETTINGS
@given(st.binary(max_size=400), st.sampled_from([".csv", ".tsv"]), st.booleans())
def test_random_bytes_as_delimited(data: bytes, suffix: str, quoting: bool) -> None:
    records, _stats = _read(data, suffix, quoting=quoting, header=False, columns=["text", "label"])
    assert records is not None
    _covered(records, data, header=False)


@SETTINGS
@given(
    st.lists(st.fixed_dictionaries({"text": st.text(max_size=30), "label": st.sampled_from(["a", "b"])}), max_size=8),
    st.integers(min_value=0, max_value=2000),
)
def test_truncated_jsonl_loses_only_the_cut_row(rows: list[dict], cut: int) -> None:
    full = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    data = full[: min(cut, len(full))]
    records, _ = _read(data, ".jsonl")
    assert records is not None
    good = [r for r in records if r.fields is not None]
    bad = [r for r in records if r.fields is None]
    assert [r.fields for r in good] == rows[: len(good)]  # every complete line survives, in order
    assert len(bad) <= 1  # only the line cut in half (or cut inside a UTF-8 sequence) is rejected
    assert len(records) == len([ln for ln in _lines(data) if ln.strip()])


CSV_CELL = st.text(alphabet=st.sampled_from(list("ab ,\"\n\t'é")), max_size=8)


@SETTINGS
@given(st.lists(st.lists(CSV_CELL, min_size=1, max_size=3), max_size=8), st.booleans())
def test_broken_csv_quoting_accounts_for_every_line(table: list[list[str]], quoting: bool) -> None:
    body = "\n".join(",".join(row) for row in table)
    data = ("text,label\n" + body + "\n").encode("utf-8")
    records, _stats = _read(data, ".csv", quoting=quoting)
    if records is None:
        return
    _covered(records, data, header=True)
    for r in records:
        assert (r.fields is None) == (r.reason is not None)
        if r.fields is not None:
            assert set(r.fields) == {"text", "label"}


@SETTINGS
@given(
    st.lists(st.tuples(st.text(max_size=12), st.sampled_from(["utf-8", "latin-1", "utf-16-le", "cp1252"])), max_size=10)
)
def test_mixed_encodings_reject_only_undecodable_lines(lines: list[tuple[str, str]]) -> None:
    parts = []
    for text, enc in lines:
        clean = text.replace("\n", " ").replace("\r", " ").replace("\t", " ")
        parts.append(clean.encode(enc, errors="replace") + b"\tham")
    data = b"\n".join(parts) + b"\n"
    records, _stats = _read(data, ".tsv", header=False, columns=["text", "label"], quoting=False)
    assert records is not None
    _covered(records, data, header=False)
    for r in records:
        if r.reason == "decode_error":
            assert "not valid utf-8" in r.detail
        elif r.fields is not None:
            assert r.fields["label"].strip() in ("ham", "") or "\t" in r.raw
