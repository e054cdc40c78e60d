"""Read any common dataset file into one raw frame: one row per source record with its true line
number, its original text and its parse error, so that no record is lost before validation can
explain it. Large files are read in batches; memory is bounded by the batch size, not the file size.

Formats: JSON Lines (`.jsonl`, `.jsonl.gz`), JSON arrays (`.json`), Parquet, CSV, and Hugging Face
datasets: a `Dataset.save_to_disk` directory, a local folder laid out as a dataset repository, or a
hub id already in the local Hugging Face cache (never downloaded here).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import polars as pl

from fineplat.errors import DatasetError
from fineplat.ingestion.result import RAW_SCHEMA, empty_frame

DEFAULT_BATCH_SIZE = 10_000
FORMATS = ("jsonl", "json", "parquet", "csv", "hf_disk", "hf_folder", "hf_hub")
# File extensions a dataset repository folder may hold, as the `datasets` library's packaged builders read them.
_DATA_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Rows in a CSV may hold nested data (message lists) as JSON text, since CSV has no nesting.
_JSON_CELL = re.compile(r"^\s*[\[{]")
# csv's default field limit (128 KiB) rejects long conversations; allow what a row can really hold.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _suffixes(path: Path) -> list[str]:
    return [s.lower() for s in path.suffixes]


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]  # GzipFile is a binary IO
    return open(path, "rb")


def detect_format(source: str | Path) -> str:
    """Name the format of `source` from its shape on disk (and, for `.json`, its first bytes), so
    users never have to say what a file is; `format=` overrides this when a name misleads."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return "hf_disk"
        return "hf_folder"
    if not path.exists():
        if _HUB_ID.match(str(source)):
            return "hf_hub"
        raise DatasetError(
            f"{source}: no such file or directory. Pass a JSONL/JSON/Parquet/CSV file, a dataset folder, "
            "or a Hugging Face dataset id (org/name) that is in the local cache."
        )
    suffixes = [s for s in _suffixes(path) if s != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix == ".json":
        return _sniff_json(path)
    raise DatasetError(
        f"{path}: unknown file type {suffix or '(no extension)'!r}. Expected .jsonl, .json, .parquet or .csv "
        "(optionally .gz), or pass format= explicitly (one of " + ", ".join(FORMATS) + ")."
    )


def _sniff_json(path: Path) -> str:
    """A `.json` file is a JSON array when it starts with `[`, else JSON Lines (people often name
    JSONL files `.json`)."""
    with _open_binary(path) as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "json" if head.startswith(b"[") else "jsonl"


def iter_raw(
    source: str | Path,
    *,
    format: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    split: str = "train",
) -> Iterator[pl.DataFrame]:
    """Yield the raw frame of `source` in batches of at most `batch_size` records (RAW_SCHEMA).
    `split` chooses the split of a Hugging Face dataset dict or dataset repository."""
    if batch_size < 1:
        raise DatasetError(f"batch_size must be at least 1, got {batch_size}.")
    fmt = format or detect_format(source)
    if fmt not in FORMATS:
        raise DatasetError(f"{source}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}.")
    path = Path(source).expanduser()
    records: Iterable[tuple[int, str, str, str | None, str | None]]
    if fmt == "jsonl":
        records = _jsonl_records(path, str(source))
    elif fmt == "json":
        records = _json_array_records(path, str(source))
    elif fmt == "csv":
        records = _csv_records(path, str(source))
    elif fmt == "parquet":
        yield from _parquet_batches(path, str(source), batch_size)
        return
    elif fmt == "hf_disk":
        yield from _hf_disk_batches(path, split, batch_size)
        return
    elif fmt == "hf_folder":
        yield from _folder_batches(path, split, batch_size, display_root=None)
        return
    else:
        yield from _hub_batches(str(source), split, batch_size)
        return
    yield from _batched(records, batch_size)


def read_raw(
    source: str | Path,
    *,
    format: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    split: str = "train",
) -> pl.DataFrame:
    """Read all of `source` into one raw frame (see `iter_raw` for the bounded-memory variant)."""
    frames = list(iter_raw(source, format=format, batch_size=batch_size, split=split))
    if not frames:
        return empty_frame(RAW_SCHEMA)
    return pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]


def _batched(
    records: Iterable[tuple[int, str, str, str | None, str | None]], batch_size: int
) -> Iterator[pl.DataFrame]:
    columns: dict[str, list[Any]] = {name: [] for name in RAW_SCHEMA}
    count = 0
    for line, source, raw, parse_error, data in records:
        columns["line"].append(line)
        columns["source"].append(source)
        columns["raw"].append(raw)
        columns["parse_error"].append(parse_error)
        columns["data"].append(data)
        count += 1
        if count == batch_size:
            yield pl.DataFrame(columns, schema=RAW_SCHEMA)
            columns = {name: [] for name in RAW_SCHEMA}
            count = 0
    if count:
        yield pl.DataFrame(columns, schema=RAW_SCHEMA)


def _utf8_error(exc: UnicodeDecodeError) -> str:
    return f"invalid_utf8: byte 0x{exc.object[exc.start]:02x} at byte offset {exc.start} is not valid UTF-8"


def _json_error(exc: json.JSONDecodeError) -> str:
    return f"json_parse_error: {exc.msg} at column {exc.colno}"


def _jsonl_records(path: Path, source: str) -> Iterator[tuple[int, str, str, str | None, str | None]]:
    """One record per non-blank line; blank lines are not records (a trailing newline is common)."""
    with _open_binary(path) as handle:
        for number, raw_bytes in enumerate(handle, start=1):
            stripped = raw_bytes.strip()
            if number == 1 and stripped.startswith(b"\xef\xbb\xbf"):
                stripped = stripped[3:]
            if not stripped:
                continue
            try:
                text = stripped.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, source, stripped.decode("utf-8", "replace"), _utf8_error(exc), None
                continue
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, source, text, _json_error(exc), None
                continue
            yield number, source, text, None, text


def _surrogate_error(text: str) -> str | None:
    """Text decoded with `surrogateescape` carries U+DC80..U+DCFF where the bytes were not UTF-8."""
    for offset, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":
            return f"invalid_utf8: byte 0x{ord(char) - 0xDC00:02x} at character {offset} is not valid UTF-8"
    return None


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _scan_json_value_end(text: str, start: int) -> int:
    """Index just past the array element starting at `start`: the next `,` or `]` at nesting depth
    zero outside strings. Used only to resynchronize after a malformed element."""
    depth = 0
    in_string = False
    escaped = False
    index = start
    while index < len(text):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            if depth == 0:
                return index
            depth -= 1
        elif char == "," and depth == 0:
            return index
        index += 1
    return index


def _json_array_records(path: Path, source: str) -> Iterator[tuple[int, str, str, str | None, str | None]]:
    """Elements of a top-level JSON array; `line` is the line where each element starts, so a user
    can jump to it. A malformed element becomes one parse-error record and reading resumes after it."""
    with _open_binary(path) as handle:
        text = handle.read().decode("utf-8", "surrogateescape")
    text = text.removeprefix("\ufeff")
    decoder = json.JSONDecoder()
    index = len(text) - len(text.lstrip())
    if not text.startswith("[", index):
        raise DatasetError(
            f"{source}: a .json file must hold a JSON array of records ([{{...}}, ...]) or JSON Lines."
        )
    index += 1
    line, counted_to = 1, 0

    def line_at(position: int) -> int:
        nonlocal line, counted_to
        line += text.count("\n", counted_to, position)
        counted_to = position
        return line

    while True:
        while index < len(text) and text[index] in " \t\r\n,":
            index += 1
        if index >= len(text):
            yield line_at(index), source, "", "json_parse_error: the array is not closed with ']'", None
            return
        if text[index] == "]":
            return
        start = index
        element_line = line_at(start)
        try:
            _, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            end = _scan_json_value_end(text, start)
            raw = text[start:end].strip()
            column = exc.pos - text.rfind("\n", 0, exc.pos)
            error_line = element_line + text.count("\n", start, exc.pos)
            message = f"json_parse_error: {exc.msg} at line {error_line} column {column}"
            if end >= len(text):
                message += "; the file ends inside this record (truncated?)"
                yield element_line, source, _printable(raw), message, None
                return
            yield element_line, source, _printable(raw), message, None
            index = end
            continue
        raw = text[start:end]
        utf8_problem = _surrogate_error(raw)
        if utf8_problem:
            yield element_line, source, _printable(raw), utf8_problem, None
        else:
            yield element_line, source, raw, None, raw
        index = end


class _LineTap:
    """Feeds lines to `csv.reader` while keeping the ones it consumed, so each record keeps its
    original text and its first line number even when quoted cells span lines."""

    def __init__(self, handle: Iterable[str]) -> None:
        self.lines = iter(handle)
        self.consumed: list[str] = []
        self.count = 0

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.consumed.append(line)
        self.count += 1
        return line


def _csv_cell(value: str) -> Any:
    if _JSON_CELL.match(value):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, (list, dict)):
            return parsed
    return value


def _csv_records(path: Path, source: str) -> Iterator[tuple[int, str, str, str | None, str | None]]:
    """Records of a CSV with a header row; cells holding JSON lists/objects are decoded."""
    delimiter = "\t" if ".tsv" in _suffixes(path) else ","
    with _open_binary(path) as binary:
        handle = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        tap = _LineTap(handle)
        reader = csv.reader(tap, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(f"{source}, line 1: cannot read the CSV header ({exc}).") from exc
        tap.consumed.clear()
        while True:
            first_line = tap.count + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raw = "".join(tap.consumed).rstrip("\r\n")
                tap.consumed.clear()
                yield (
                    first_line,
                    source,
                    _printable(raw),
                    f"json_parse_error: malformed CSV record ({exc})",
                    None,
                )
                continue
            raw = "".join(tap.consumed).rstrip("\r\n")
            tap.consumed.clear()
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            utf8_problem = _surrogate_error(raw)
            if utf8_problem:
                yield first_line, source, _printable(raw), utf8_problem, None
                continue
            if len(cells) != len(header):
                message = (
                    f"json_parse_error: CSV record has {len(cells)} fields, the header has {len(header)} "
                    f"({', '.join(header)})"
                )
                yield first_line, source, raw, message, None
                continue
            record = {name: _csv_cell(value) for name, value in zip(header, cells, strict=True)}
            yield first_line, source, raw, None, json.dumps(record, ensure_ascii=False)


def _rows_frame(rows: list[dict[str, Any]], source: str, first_line: int) -> pl.DataFrame:
    texts = [json.dumps(row, ensure_ascii=False, default=str) for row in rows]
    return pl.DataFrame(
        {
            "line": list(range(first_line, first_line + len(rows))),
            "source": [source] * len(rows),
            "raw": texts,
            "parse_error": [None] * len(rows),
            "data": texts,
        },
        schema=RAW_SCHEMA,
    )


def _parquet_batches(path: Path, source: str, batch_size: int) -> Iterator[pl.DataFrame]:
    """Row groups streamed with pyarrow; `line` is the 1-based row number."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for non-Parquet bytes
        raise DatasetError(
            f"{source}: not a readable Parquet file ({exc}). Re-export it or pass format=."
        ) from exc
    first_line = 1
    for batch in parquet.iter_batches(batch_size=batch_size):
        rows = batch.to_pylist()
        yield _rows_frame(rows, source, first_line)
        first_line += len(rows)


def _hf_disk_batches(path: Path, split: str, batch_size: int) -> Iterator[pl.DataFrame]:
    """A directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    source = str(path)
    if isinstance(loaded, datasets.DatasetDict):
        splits = sorted(loaded.keys())
        if split not in loaded:
            if len(splits) != 1:
                raise DatasetError(
                    f"{path}: no split {split!r}; the dataset has {', '.join(splits)}. Pass split=."
                )
            split = splits[0]
        loaded = loaded[split]
        source = f"{path}[{split}]"
    first_line = 1
    for batch in loaded.iter(batch_size=batch_size):
        names = list(batch.keys())
        rows = [dict(zip(names, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        yield _rows_frame(rows, source, first_line)
        first_line += len(rows)


def dataset_folder_files(root: Path, split: str) -> list[Path]:
    """The data files of a dataset-repository folder for `split`, in sorted order. As in the Hub's
    layout conventions, a file belongs to a split when the split name is a path component or a
    name prefix (`data/train-00000-of-00002.parquet`, `train.jsonl`); with no split names, all files."""
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and _data_format(p) is not None
    )
    if not files:
        raise DatasetError(
            f"{root}: no data files (*.jsonl, *.json, *.parquet, *.csv) in this folder. Point at a dataset "
            "folder, a save_to_disk directory or a file."
        )
    split_names = {"train", "validation", "valid", "dev", "test", "eval"}

    def split_of(path: Path) -> str | None:
        for part in path.relative_to(root).parts:
            token = re.split(r"[-_.]", part.lower())[0]
            if token in split_names:
                return token
        return None

    labelled = [p for p in files if split_of(p) is not None]
    if not labelled:
        return files
    chosen = [p for p in labelled if split_of(p) == split.lower()]
    if not chosen:
        found = sorted({s for p in labelled if (s := split_of(p))})
        raise DatasetError(
            f"{root}: no files for split {split!r}; found splits {', '.join(found)}. Pass split=."
        )
    return chosen


def _data_format(path: Path) -> str | None:
    suffixes = [s for s in _suffixes(path) if s != ".gz"]
    return _DATA_SUFFIXES.get(suffixes[-1]) if suffixes else None


def _folder_batches(
    root: Path, split: str, batch_size: int, display_root: str | None
) -> Iterator[pl.DataFrame]:
    for file in dataset_folder_files(root, split):
        fmt = _data_format(file)
        assert fmt is not None
        if fmt == "json":
            fmt = _sniff_json(file)
        label = f"{display_root}/{file.relative_to(root).as_posix()}" if display_root else str(file)
        for frame in iter_raw(file, format=fmt, batch_size=batch_size):
            yield frame.with_columns(source=pl.lit(label, dtype=pl.String))


def _hub_batches(repo_id: str, split: str, batch_size: int) -> Iterator[pl.DataFrame]:
    """A hub dataset id resolved offline from the local Hugging Face cache."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id=repo_id, repo_type="dataset", local_files_only=True))
    except Exception as exc:  # the hub client raises several types for "not cached"
        raise DatasetError(
            f"dataset {repo_id!r}: not a local path and not in the local Hugging Face cache. On a machine with "
            f"hub access run `hf download --repo-type dataset {repo_id}`, or pass a local file or folder. "
            f"({type(exc).__name__})"
        ) from exc
    yield from _folder_batches(folder, split, batch_size, display_root=repo_id)


def count_records_hint(source: str | Path) -> int | None:
    """Number of lines in a line-oriented file (an upper bound on its records), read in chunks, so
    the CLI can show a progress bar; None for formats where that costs a full parse."""
    path = Path(source)
    if not path.is_file() or detect_format(path) not in ("jsonl", "csv"):
        return None
    lines = 0
    with _open_binary(path) as handle:
        while chunk := handle.read(1 << 22):
            lines += chunk.count(b"\n")
    return lines
