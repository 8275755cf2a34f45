"""Read source files into records, one per row, never losing a row.

Every physical row of a file becomes exactly one :class:`Record`: either with
its fields, or with a ``reason`` code saying why it could not be read
(``decode_error``, ``bad_json``, ``bad_csv`` …) and its line number. Blank
lines are not rows; they are counted separately.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmloop.errors import DataError
from slmloop.manifest import SourceConfig

__all__ = [
    "FORMATS",
    "MAX_JSON_DEPTH",
    "Record",
    "SourceStats",
    "detect_format",
    "iter_source_files",
    "json_depth",
    "read_records",
]

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
}
RAW_EXCERPT = 300


@dataclass
class Record:
    file: str
    line: int
    fields: dict[str, Any] | None = None
    reason: str | None = None
    detail: str = ""
    raw: str = ""
    #: last physical line of the row, when a quoted CSV field spans several lines
    last_line: int | None = None


@dataclass
class SourceStats:
    blank_lines: int = 0
    files: list[str] = field(default_factory=list)


def detect_format(path: Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {path.name} from its suffix",
            hint="Set `format: jsonl|csv|tsv` on the source in slmloop.yaml or pass --format.",
        )
    return fmt


def is_hf_dataset_dir(path: Path) -> bool:
    """A folder written by ``datasets.Dataset.save_to_disk`` (or ``DatasetDict``)."""
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())


def iter_source_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(
            f"source {path} does not exist",
            hint="Check data.sources[].path in slmloop.yaml (relative paths start at the manifest).",
        )
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS)
        if not files:
            raise DataError(
                f"folder {path} holds no .jsonl, .json, .csv, .tsv or .parquet files",
                hint="Point the source at a data file or a folder of them.",
            )
        return files
    return [path]


def _excerpt(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="backslashreplace")
    text = text.rstrip("\r\n")
    return text if len(text) <= RAW_EXCERPT else text[:RAW_EXCERPT] + "…"


def _decoded_lines(data: bytes, encoding: str, file: str) -> Iterator[tuple[int, str | None, Record | None]]:
    """Yield (line_number, text, reject) for every non-blank line of ``data``.

    Byte-oriented encodings are split on b"\\n" and decoded line by line so one
    bad line rejects only that line. Wide encodings (UTF-16/32) decode the whole
    file at once.
    """
    info = codecs.lookup(encoding)
    if info.name.startswith(("utf-16", "utf-32")):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{file} is not valid {encoding}: {exc}",
                hint="Pass the right --encoding, or re-save the file as UTF-8.",
            ) from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline that ends the last line does not start a row
        for n, line in enumerate(lines, start=1):
            yield n, line, None
        return
    bom = codecs.BOM_UTF8
    chunks = data.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    for n, chunk in enumerate(chunks, start=1):
        if n == 1 and info.name == "utf-8" and chunk.startswith(bom):
            chunk = chunk[len(bom) :]
        try:
            yield n, chunk.decode(info.name), None
        except UnicodeDecodeError as exc:
            if not chunk.strip():
                yield n, "", None
                continue
            yield (
                n,
                None,
                Record(
                    file=file,
                    line=n,
                    reason="decode_error",
                    detail=f"not valid {encoding} at byte {exc.start}: {chunk[exc.start : exc.start + 4]!r}",
                    raw=_excerpt(chunk),
                ),
            )


#: JSON nested deeper than this is refused as a row (no task row needs it; the parser and every later
#: json.dumps would recurse once per level)
MAX_JSON_DEPTH = 64


def json_depth(obj: Any) -> int:
    """How deep ``obj``'s lists and dicts nest (a scalar: 0), counted without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _too_deep(file: str, n: int, text: str) -> Record:
    return Record(
        file, n, reason="bad_json", detail=f"nested more than {MAX_JSON_DEPTH} levels deep", raw=_excerpt(text)
    )


def _read_jsonl(data: bytes, src: SourceConfig, file: str, stats: SourceStats) -> Iterator[Record]:
    for n, text, reject in _decoded_lines(data, src.encoding, file):
        if reject is not None:
            yield reject
            continue
        assert text is not None
        if not text.strip():
            stats.blank_lines += 1
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Record(file, n, reason="bad_json", detail=exc.msg, raw=_excerpt(text))
            continue
        except RecursionError:
            yield _too_deep(file, n, text)
            continue
        if json_depth(obj) > MAX_JSON_DEPTH:
            yield _too_deep(file, n, text)
            continue
        if not isinstance(obj, dict):
            yield Record(
                file,
                n,
                reason="not_an_object",
                detail=f"expected a JSON object, found {type(obj).__name__}",
                raw=_excerpt(text),
            )
            continue
        yield Record(file, n, fields=obj)


def _read_json(data: bytes, src: SourceConfig, file: str) -> Iterator[Record]:
    try:
        obj = json.loads(data.decode(src.encoding))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{file} is not a valid JSON document: {exc}",
            hint="A .json source must hold one list of objects; use .jsonl for one object per line.",
        ) from None
    except RecursionError:
        raise DataError(
            f"{file} nests its JSON too deeply to read",
            hint=f"Rows nest at most {MAX_JSON_DEPTH} levels; write one object per line (.jsonl) so that a "
            "broken row is rejected alone.",
        ) from None
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        raise DataError(f"{file} must hold a list of objects", hint="Use JSONL for other layouts.")
    for i, item in enumerate(obj, start=1):
        if isinstance(item, dict) and json_depth(item) > MAX_JSON_DEPTH:
            yield Record(file, i, reason="bad_json", detail=f"nested more than {MAX_JSON_DEPTH} levels deep")
        elif isinstance(item, dict):
            yield Record(file, i, fields=item)
        else:
            yield Record(
                file,
                i,
                reason="not_an_object",
                detail=f"item {i} is a {type(item).__name__}",
                raw=_excerpt(json.dumps(item)),
            )


def _read_delimited(data: bytes, src: SourceConfig, file: str, fmt: str, stats: SourceStats) -> Iterator[Record]:
    delimiter = src.delimiter or ("\t" if fmt == "tsv" else ",")
    rejects: list[Record] = []
    consumed: list[int] = []  # line numbers the csv reader pulled for the current record

    def lines() -> Iterator[str]:
        for n, text, reject in _decoded_lines(data, src.encoding, file):
            if reject is not None:
                rejects.append(reject)
                continue
            assert text is not None
            if not text.strip() and not src.quoting:
                stats.blank_lines += 1
                continue
            consumed.append(n)
            yield text + "\n"

    reader = csv.reader(
        lines(),
        delimiter=delimiter,
        quoting=csv.QUOTE_MINIMAL if src.quoting else csv.QUOTE_NONE,
        strict=True,
    )
    columns = list(src.columns) if src.columns else None
    while True:
        consumed.clear()
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield from _drain(rejects)
            line = consumed[0] if consumed else 0
            span = f"lines {consumed[0]}-{consumed[-1]}: " if len(consumed) > 1 else ""
            yield Record(
                file, line, reason="bad_csv", detail=f"{span}{exc}", last_line=consumed[-1] if consumed else None
            )
            continue
        start = consumed[0] if consumed else 0
        end = consumed[-1] if consumed else None
        if columns is None and src.header and any(r.line < start for r in rejects):
            bad = next(r for r in rejects if r.line < start)
            raise DataError(
                f"{file}: the header line {bad.line} cannot be read: {bad.detail}",
                hint="Pass the right --encoding, or fix the header line.",
            )
        yield from _drain(rejects)
        if not values:
            stats.blank_lines += 1  # a blank line; a row of empty fields is a row (rejected later)
            continue
        if columns is None:
            if src.header:
                columns = [v.strip() for v in values]
                if len(set(columns)) != len(columns) or any(not c for c in columns):
                    raise DataError(
                        f"{file}: the header row has empty or repeated column names: {columns}",
                        hint="Fix the header, or set `header: false` and `columns: [...]`.",
                    )
                continue
            columns = [f"column{i + 1}" for i in range(len(values))]
        raw = delimiter.join(values)
        if len(values) != len(columns):
            yield Record(
                file,
                start,
                reason="wrong_field_count",
                detail=f"expected {len(columns)} fields, found {len(values)}",
                raw=_excerpt(raw),
                last_line=end,
            )
            continue
        yield Record(file, start, fields=dict(zip(columns, values, strict=True)), raw=_excerpt(raw), last_line=end)
    yield from _drain(rejects)


def _plain(value: Any) -> Any:
    """Arrow/numpy scalars and containers → plain Python (JSON-serialisable) values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "as_py"):
        return value.as_py()
    return value


def _read_parquet(path: Path, name: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{name} is not a readable Parquet file: {exc}", hint="Check the file.") from None
    n = 0
    for batch in table.iter_batches(batch_size=10_000):
        for row in batch.to_pylist():
            n += 1
            yield Record(name, n, fields={k: _plain(v) for k, v in row.items()})


def _read_hf(src: SourceConfig, path: Path | None) -> Iterator[Record]:
    """A Hugging Face ``datasets`` source: a save_to_disk folder, or a hub id where reachable."""
    import datasets

    split = src.split or "train"
    try:
        if path is not None:
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(src.path, split=split)
    except Exception as exc:
        raise DataError(
            f"cannot load the Hugging Face dataset {src.path!r}: {str(exc).splitlines()[0]}",
            hint="Offline? Use a folder written by save_to_disk() (and set HF_HUB_OFFLINE=1 to fail fast); "
            "hub ids need the Hugging Face hub.",
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(
                f"dataset {src.path!r} has no split {split!r} (it has: {', '.join(ds)})",
                hint="Set `split:` on the source.",
            )
        ds = ds[split]
    name = f"{src.path}[{split}]"
    for i, row in enumerate(ds, start=1):
        yield Record(name, i, fields={k: _plain(v) for k, v in row.items()})


def _drain(rejects: list[Record]) -> Iterator[Record]:
    while rejects:
        yield rejects.pop(0)


def read_records(path: Path, src: SourceConfig, stats: SourceStats | None = None) -> Iterator[Record]:
    """Every row of every file under ``path``, as records."""
    stats = stats if stats is not None else SourceStats()
    try:
        codecs.lookup(src.encoding)
    except LookupError:
        raise DataError(
            f"unknown encoding {src.encoding!r}",
            hint="Use a Python codec name such as utf-8, latin-1, cp1252 or utf-16.",
        ) from None
    if src.format == "hf" or (src.format == "auto" and is_hf_dataset_dir(path)):
        stats.files.append(str(path))
        yield from _read_hf(src, path if path.exists() else None)
        return
    for file_path in iter_source_files(path):
        fmt = detect_format(file_path, src.format)
        name = str(file_path)
        stats.files.append(name)
        if fmt == "parquet":
            yield from _read_parquet(file_path, name)
            continue
        data = file_path.read_bytes()
        if fmt == "jsonl":
            yield from _read_jsonl(data, src, name, stats)
        elif fmt == "json":
            yield from _read_json(data, src, name)
        else:
            yield from _read_delimited(data, src, name, fmt, stats)
