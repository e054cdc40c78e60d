"""The benchmark registry: the evaluation test splits that training data must not leak, read from
the files users already have in their usual formats (GSM8K, MMLU, HellaSwag, ARC, HumanEval,
TruthfulQA, or plain text), plus a generator of a small GSM8K-style test split that the project
makes itself, so tests and the demo never download a benchmark.

Each item has a `query` (what a model is asked: question, context, prompt) and an `answer` (its
gold answer or choices); contamination matches both, and the query alone.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fineplat.errors import DatasetError
from fineplat.ingestion.formats import read_raw

BENCHMARK_FORMATS = ("gsm8k", "mmlu", "hellaswag", "arc", "humaneval", "truthfulqa", "text")
_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz")
_Derived = TypeVar("_Derived")


@dataclass(frozen=True)
class BenchmarkItem:
    """One test item: its benchmark, its id there, the query and the gold answer (or choices)."""

    benchmark: str
    item_id: str
    query: str
    answer: str = ""

    @property
    def text(self) -> str:
        """The whole item as one text: query, then answer."""
        return f"{self.query} {self.answer}".strip() if self.answer.strip() else self.query


class BenchmarkRegistry:
    """The benchmarks a dataset is checked against. Add files (format detected from their fields)
    or items; `from_directory` registers every benchmark file of a folder under its file stem."""

    def __init__(self) -> None:
        self._items: list[BenchmarkItem] = []
        self._sources: dict[str, dict[str, Any]] = {}
        self._derived: dict[Hashable, Any] = {}  # see `derived`; emptied on every add

    def add(
        self,
        name: str,
        path_or_items: str | Path | Iterable[Any],
        format: str | None = None,
    ) -> int:
        """Register benchmark `name` from a file or from items (dicts in the benchmark's own record
        shape, or plain strings); returns the number of items added."""
        if name in self._sources:
            raise DatasetError(f"benchmark {name!r} is already registered; use another name.")
        if isinstance(path_or_items, (str, Path)):
            path = Path(path_or_items)
            fmt = format or detect_benchmark_format(path)
            records = _read_records(path, fmt)
            origin = str(path)
        else:
            records = [(index + 1, item) for index, item in enumerate(path_or_items)]
            if format is None:
                first = records[0][1] if records else ""
                fmt = "text" if isinstance(first, str) else _format_from_fields(first, name)
            else:
                fmt = format
            origin = "(items)"
        if fmt not in BENCHMARK_FORMATS:
            raise DatasetError(
                f"benchmark {name!r}: unknown format {fmt!r}; expected one of {', '.join(BENCHMARK_FORMATS)}."
            )
        items = [
            item
            for line, record in records
            if (item := _to_item(name, fmt, line, record, origin)) is not None
        ]
        if not items:
            raise DatasetError(
                f"benchmark {name!r} ({origin}): no items could be read as {fmt}; check the file and format=."
            )
        self._items.extend(items)
        self._sources[name] = {"format": fmt, "source": origin, "items": len(items)}
        self._derived.clear()
        return len(items)

    def derived(self, key: Hashable, build: Callable[[], _Derived]) -> _Derived:
        """The value `build()` computes from the registered items (contamination's compiled n-gram
        index), built once per `key` and kept on this registry: it lives exactly as long as the
        items it was built from, and adding a benchmark forgets it. (A cache outside the registry,
        keyed by `id(registry)`, would hand a new registry the index of a freed one at the same
        address.)"""
        if key not in self._derived:
            self._derived[key] = build()
        value: _Derived = self._derived[key]
        return value

    @property
    def items(self) -> list[BenchmarkItem]:
        """All registered items, in registration order."""
        return list(self._items)

    @property
    def names(self) -> list[str]:
        """Registered benchmark names, in registration order."""
        return list(self._sources)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Name -> {format, source, items}: what a report needs to say what was checked."""
        return {name: dict(info) for name, info in self._sources.items()}

    @classmethod
    def from_directory(cls, directory: str | Path) -> BenchmarkRegistry:
        """Register every benchmark file (*.jsonl, *.json, *.csv, *.parquet) of `directory`, named
        by file stem, formats detected."""
        root = Path(directory)
        if not root.is_dir():
            raise DatasetError(f"{root}: not a directory of benchmark files.")
        registry = cls()
        files = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(_FILE_SUFFIXES))
        if not files:
            raise DatasetError(f"{root}: no benchmark files (*.jsonl, *.json, *.csv, *.parquet).")
        for file in files:
            registry.add(file.name.split(".")[0], file)
        return registry


def _format_from_fields(record: Any, where: str) -> str:
    if isinstance(record, dict):
        keys = set(record)
        if {"task_id", "prompt", "canonical_solution"} <= keys:
            return "humaneval"
        if "endings" in keys and ("ctx" in keys or "ctx_a" in keys):
            return "hellaswag"
        if "answerKey" in keys and "question" in keys:
            return "arc"
        if "choices" in keys and "question" in keys and "answer" in keys:
            return "mmlu"
        if ("Question" in keys and "Best Answer" in keys) or ("question" in keys and "best_answer" in keys):
            return "truthfulqa"
        if {"question", "answer"} <= keys:
            return "gsm8k"
        if "text" in keys:
            return "text"
    raise DatasetError(
        f"{where}: cannot tell the benchmark format from fields {sorted(record) if isinstance(record, dict) else type(record).__name__}; "
        f"pass format= (one of {', '.join(BENCHMARK_FORMATS)})."
    )


def detect_benchmark_format(path: Path) -> str:
    """The benchmark format of a file, from its fields (or, for a header-less CSV of six columns
    ending in A-D, MMLU's original layout)."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            first = next(csv.reader(handle), None)
        if first is None:
            raise DatasetError(f"{path}: empty benchmark file.")
        if len(first) == 6 and first[5].strip() in ("A", "B", "C", "D"):
            return "mmlu"
        return _format_from_fields(dict.fromkeys(first, ""), str(path))
    records = _read_records(path, None, limit=1)
    if not records:
        raise DatasetError(f"{path}: empty benchmark file.")
    return _format_from_fields(records[0][1], str(path))


def _read_records(path: Path, fmt: str | None, limit: int | None = None) -> list[tuple[int, Any]]:
    if not path.exists():
        raise DatasetError(f"{path}: benchmark file not found.")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
        if fmt == "mmlu" and rows and len(rows[0]) == 6 and rows[0][5].strip() in ("A", "B", "C", "D"):
            return [(i + 1, row) for i, row in enumerate(rows)]
        header, body = rows[0], rows[1:]
        return [(i + 2, dict(zip(header, row, strict=False))) for i, row in enumerate(body)]
    raw = read_raw(path)
    out: list[tuple[int, Any]] = []
    for line, error, data in zip(
        raw["line"].to_list(), raw["parse_error"].to_list(), raw["data"].to_list(), strict=True
    ):
        if error is not None:
            raise DatasetError(f"{path}, line {line}: {error}; fix the benchmark file.")
        out.append((line, json.loads(data)))
        if limit is not None and len(out) >= limit:
            break
    return out


_LETTERS = "ABCDEFGHIJ"


def _to_item(name: str, fmt: str, line: int, record: Any, origin: str) -> BenchmarkItem | None:
    """Map one record of a benchmark format to (query, text); None for records without text."""
    item_id = f"line {line}"
    query: str
    answer = ""
    if fmt == "text":
        if isinstance(record, dict):
            record = record.get("text", "")
        query = str(record)
    elif fmt == "gsm8k":
        query, answer = str(record["question"]), str(record.get("answer", ""))
    elif fmt == "mmlu":
        if isinstance(record, list):  # original CSV: question, A, B, C, D, answer letter
            query, choices, gold = record[0], record[1:5], record[5].strip()
            answer_index = _LETTERS.index(gold) if gold in _LETTERS[:4] else None
        else:
            query, choices = str(record["question"]), list(record.get("choices", []))
            gold_value = record.get("answer")
            answer_index = (
                gold_value
                if isinstance(gold_value, int)
                else (_LETTERS.index(gold_value) if gold_value in _LETTERS else None)
            )
        answer = " ".join(str(c) for c in choices)
        if answer_index is not None and answer_index < len(choices):
            answer = f"{answer} {choices[answer_index]}"
    elif fmt == "hellaswag":
        query = str(record.get("ctx") or f"{record.get('ctx_a', '')} {record.get('ctx_b', '')}".strip())
        endings = record.get("endings", [])
        label = record.get("label")
        if isinstance(label, str) and label.isdigit():
            label = int(label)
        answer = str(endings[label]) if isinstance(label, int) and 0 <= label < len(endings) else ""
        item_id = str(record.get("ind", item_id))
    elif fmt == "arc":
        question = record["question"]
        if isinstance(question, dict):  # AI2's original layout
            query = str(question.get("stem", ""))
            arc_choices = {c.get("label"): c.get("text", "") for c in question.get("choices", [])}
        else:  # the Hugging Face layout
            query = str(question)
            raw_choices = record.get("choices", {})
            arc_choices = dict(zip(raw_choices.get("label", []), raw_choices.get("text", []), strict=False))
        answer = str(arc_choices.get(record.get("answerKey"), ""))
        item_id = str(record.get("id", item_id))
    elif fmt == "humaneval":
        query, answer = str(record["prompt"]), str(record.get("canonical_solution", ""))
        item_id = str(record.get("task_id", item_id))
    else:  # truthfulqa: the original CSV or the Hugging Face generation config
        query = str(record.get("Question", record.get("question", "")))
        answer = str(record.get("Best Answer", record.get("best_answer", "")))
    if not query.strip():
        return None
    return BenchmarkItem(benchmark=name, item_id=item_id, query=query, answer=answer.strip())


# --- a small GSM8K-style test split the project makes itself -------------------------------------

_NAMES = [
    "Amara", "Bastian", "Chiara", "Dmitri", "Esme", "Farid", "Greta", "Hamish", "Ines", "Jonah",
    "Keiko", "Lucan", "Maren", "Nilo", "Odette", "Pavel", "Quinn", "Rosalind", "Soren", "Talia",
]  # fmt: skip
_GOODS = [
    ("jars of honey", "jar"), ("bundles of firewood", "bundle"), ("packets of seeds", "packet"),
    ("crates of apples", "crate"), ("rolls of ribbon", "roll"), ("boxes of chalk", "box"),
    ("bags of flour", "bag"), ("spools of thread", "spool"), ("trays of seedlings", "tray"),
    ("cartons of eggs", "carton"),
]  # fmt: skip
_PLACES = [
    "the harbor market",
    "the village fair",
    "a roadside stall",
    "the school bazaar",
    "the winter festival",
    "the farm shop",
]


def _gsm8k_item(rng: random.Random) -> dict[str, str]:
    name, other = rng.sample(_NAMES, 2)
    goods, unit = rng.choice(_GOODS)
    place = rng.choice(_PLACES)
    template = rng.randrange(4)
    a, b, c = rng.randint(3, 19), rng.randint(2, 12), rng.randint(2, 9)
    if template == 0:
        total = a * b
        left = total - c
        question = (
            f"{name} brings {a} {goods} to {place}, and every {unit} sells for {b} dollars. After lunch "
            f"{name} gives {c} dollars of the earnings to {other} for helping carry the stock. How many dollars "
            f"does {name} keep if every {unit} is sold?"
        )
        answer = f"{name} earns {a} * {b} = <<{a}*{b}={total}>>{total} dollars.\nAfter paying {other}, {total} - {c} = <<{total}-{c}={left}>>{left} dollars remain.\n#### {left}"
    elif template == 1:
        total = a + b * c
        question = (
            f"On Monday {name} packs {a} {goods} for {place}. On each of the next {c} days {name} packs {b} more, "
            f"while {other} keeps count in a small notebook. How many {goods} has {name} packed by the end of the week?"
        )
        answer = f"The later days add {b} * {c} = <<{b}*{c}={b * c}>>{b * c}.\nIn total {a} + {b * c} = <<{a}+{b * c}={total}>>{total}.\n#### {total}"
    elif template == 2:
        per = a * c
        total = per * b
        question = (
            f"{other} orders {b} stalls at {place} for {name}. Each stall displays {a} {goods}, and each {unit} "
            f"weighs {c} pounds. What is the total weight in pounds that {name} has to carry across the square?"
        )
        answer = f"One stall holds {a} * {c} = <<{a}*{c}={per}>>{per} pounds.\n{b} stalls hold {per} * {b} = <<{per}*{b}={total}>>{total} pounds.\n#### {total}"
    else:
        start = a * b
        half = start // 2
        question = (
            f"{name} had {start} {goods} stored in the cellar before {place} opened. Half of them were sold in "
            f"the first hour, and then {other} bought {c} of the rest. How many {goods} were still in the cellar afterwards?"
        )
        rest = start - half - c
        answer = f"Half of {start} is <<{start}/2={half}>>{half}.\nThen {start - half} - {c} = <<{start - half}-{c}={rest}>>{rest}.\n#### {rest}"
    return {"question": question, "answer": answer}


def generate_benchmark_sample(
    out_path: Path, *, name: str = "gsm8k-sample", n: int = 50, seed: int = 0
) -> Path:
    """Write `n` distinct GSM8K-style test items ({"question", "answer"} JSONL, answers ending in
    `#### <number>` as GSM8K's do) to `out_path`. The items depend only on `name` and `seed`, so a
    test or the demo regenerates the same split byte for byte; a different name is a different split.
    The demo ships one such file and a test compares it byte for byte: after changing the templates,
    regenerate it (`python -m fineplat.demo.dataset`)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = random.Random(f"{name}:{seed}")
    seen: set[str] = set()
    items: list[dict[str, str]] = []
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > n * 100:
            raise ValueError(f"cannot generate {n} distinct items; ask for fewer")
        item = _gsm8k_item(rng)
        if item["question"] not in seen:
            seen.add(item["question"])
            items.append(item)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    return out_path
