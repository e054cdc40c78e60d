"""Reading every supported format into the raw frame: true line numbers, original text, parse
errors kept as rows, batches bounded by batch_size."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineplat.errors import DatasetError
from fineplat.ingestion import RAW_SCHEMA, detect_format, iter_raw, read_raw

ROW_A = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
ROW_B = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


def test_jsonl_keeps_true_line_numbers_across_blank_lines_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps(ROW_A).encode()
        + b"\n\n   \n"
        + json.dumps(ROW_B).encode()
        + b"\r\n{broken\n"
    )
    raw = read_raw(path)
    assert raw.schema == pl.Schema(RAW_SCHEMA)
    assert raw["line"].to_list() == [1, 4, 5]
    assert raw["source"].to_list() == [str(path)] * 3
    assert json.loads(raw["data"][0]) == ROW_A
    assert raw["raw"][1] == json.dumps(ROW_B)
    assert raw["parse_error"][:2].to_list() == [None, None]
    assert (
        raw["parse_error"][2]
        == "json_parse_error: Expecting property name enclosed in double quotes at column 2"
    )
    assert raw["raw"][2] == "{broken"
    assert raw["data"][2] is None


def test_jsonl_invalid_utf8_line_is_a_row_with_its_byte_offset(write_lines: Callable[..., Path]) -> None:
    path = write_lines([ROW_A, b'{"text": "caf\xe9"}'])
    raw = read_raw(path)
    assert raw["line"].to_list() == [1, 2]
    assert raw["parse_error"][1] == "invalid_utf8: byte 0xe9 at byte offset 13 is not valid UTF-8"
    assert raw["raw"][1] == '{"text": "caf\ufffd"}'


def test_gzipped_jsonl_is_read_transparently(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write((json.dumps(ROW_A) + "\n" + json.dumps(ROW_B) + "\n").encode())
    assert detect_format(path) == "jsonl"
    assert [json.loads(d) for d in read_raw(path)["data"]] == [ROW_A, ROW_B]


def test_json_array_line_is_where_each_element_starts(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([ROW_A, ROW_B], indent=2))
    raw = read_raw(path)
    assert detect_format(path) == "json"
    assert raw["line"].to_list() == [2, 14]
    assert [json.loads(d) for d in raw["data"]] == [ROW_A, ROW_B]
    assert json.loads(raw["raw"][1]) == ROW_B


def test_json_array_malformed_element_is_one_row_and_reading_resumes(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[\n  {"text": "one"},\n  {"text": "two" "oops"},\n  {"text": "three"}\n]\n')
    raw = read_raw(path)
    assert raw["line"].to_list() == [2, 3, 4]
    assert raw["parse_error"][1] == "json_parse_error: Expecting ',' delimiter at line 3 column 18"
    assert raw["raw"][1] == '{"text": "two" "oops"}'
    assert json.loads(raw["data"][2]) == {"text": "three"}


def test_dot_json_holding_json_lines_is_read_as_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ROW_A) + "\n" + json.dumps(ROW_B) + "\n")
    assert detect_format(path) == "jsonl"
    assert read_raw(path)["line"].to_list() == [1, 2]


def test_parquet_rows_are_numbered_and_batches_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(25)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)
    batches = list(iter_raw(path, batch_size=10))
    assert [b.height for b in batches] == [10, 10, 5]
    raw = pl.concat(batches)
    assert raw["line"].to_list() == list(range(1, 26))
    assert json.loads(raw["data"][24]) == rows[24]


def test_jsonl_batches_never_exceed_batch_size(write_lines: Callable[..., Path]) -> None:
    path = write_lines([ROW_A] * 23)
    sizes = [batch.height for batch in iter_raw(path, batch_size=10)]
    assert sizes == [10, 10, 3]


def test_csv_multiline_cells_json_cells_and_field_count(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(
        'instruction,input,output\nSay hi,,"Hi,\nthere"\nCount,"[1, 2]",3\ntoo,many,fields,here\n',
        encoding="utf-8",
    )
    raw = read_raw(path)
    assert raw["line"].to_list() == [2, 4, 5]
    assert json.loads(raw["data"][0]) == {"instruction": "Say hi", "input": "", "output": "Hi,\nthere"}
    assert raw["raw"][0] == 'Say hi,,"Hi,\nthere"'
    assert json.loads(raw["data"][1])["input"] == [1, 2]
    assert raw["parse_error"][2] == (
        "json_parse_error: CSV record has 4 fields, the header has 3 (instruction, input, output)"
    )


def test_hf_save_to_disk_dataset_and_dataset_dict(tmp_path: Path) -> None:
    import datasets

    rows = [{"text": "first document"}, {"text": "second document"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
    ).save_to_disk(str(tmp_path / "dict"))
    assert detect_format(tmp_path / "single") == "hf_disk"
    single = read_raw(tmp_path / "single")
    assert [json.loads(d) for d in single["data"]] == rows
    assert single["line"].to_list() == [1, 2]
    test_split = read_raw(tmp_path / "dict", split="test")
    assert test_split["source"].to_list() == [f"{tmp_path / 'dict'}[test]"]
    with pytest.raises(DatasetError, match=r"no split 'validation'; the dataset has test, train"):
        read_raw(tmp_path / "dict", split="validation")


def _dataset_repo(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist([{"text": "train one"}, {"text": "train two"}]),
        root / "data" / "train-00000-of-00002.parquet",
    )
    pq.write_table(
        pa.Table.from_pylist([{"text": "train three"}]), root / "data" / "train-00001-of-00002.parquet"
    )
    pq.write_table(
        pa.Table.from_pylist([{"text": "held out"}]), root / "data" / "test-00000-of-00001.parquet"
    )
    (root / "README.md").write_text("---\nlicense: mit\n---\n")
    return root


def test_dataset_repo_folder_reads_the_split_files_in_order(tmp_path: Path) -> None:
    root = _dataset_repo(tmp_path / "repo")
    assert detect_format(root) == "hf_folder"
    raw = read_raw(root)
    assert [json.loads(d)["text"] for d in raw["data"]] == ["train one", "train two", "train three"]
    assert raw["source"].to_list()[-1] == str(root / "data" / "train-00001-of-00002.parquet")
    assert raw["line"].to_list() == [1, 2, 1]
    assert [json.loads(d)["text"] for d in read_raw(root, split="test")["data"]] == ["held out"]


def test_hub_id_resolves_offline_from_the_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "datasets--acme--chats"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _dataset_repo(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert detect_format("acme/chats") == "hf_hub"
    raw = read_raw("acme/chats")
    assert raw["source"].to_list() == ["acme/chats/data/train-00000-of-00002.parquet"] * 2 + [
        "acme/chats/data/train-00001-of-00002.parquet"
    ]
    with pytest.raises(
        DatasetError,
        match=r"dataset 'acme/missing': not a local path and not in the local Hugging Face cache",
    ):
        read_raw("acme/missing")


def test_unknown_extension_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(
        DatasetError, match=r"data.txt: unknown file type '.txt'. Expected .jsonl, .json, .parquet or .csv"
    ):
        read_raw(path)
    assert read_raw(path, format="jsonl")["parse_error"][0].startswith("json_parse_error")


def test_truncated_json_array_is_reported_not_silently_shortened(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[\n {"text": "a"},\n {"text": "b"')
    raw = read_raw(path)
    assert raw["line"].to_list() == [2, 3]
    assert raw["parse_error"][1] == (
        "json_parse_error: Expecting ',' delimiter at line 3 column 14; the file ends inside this record (truncated?)"
    )
    path.write_text('[\n {"text": "a"},\n {"text": "b"}\n')
    unclosed = read_raw(path)
    assert unclosed["line"].to_list() == [2, 3, 4]
    assert unclosed["parse_error"].to_list() == [
        None,
        None,
        "json_parse_error: the array is not closed with ']'",
    ]
