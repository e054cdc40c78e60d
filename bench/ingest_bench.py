"""Ingestion benchmark: throughput per stage and end to end, peak memory, and the quality of
deduplication and decontamination against planted truth, next to a naive per-row baseline.

    .venv/bin/python bench/ingest_bench.py                 # 100k rows of ~800 characters
    .venv/bin/python bench/ingest_bench.py --rows 10000    # smaller

It generates a chat JSONL dataset with known numbers of planted exact duplicates, near duplicates
(edited copies), contaminated rows (verbatim and lightly edited benchmark items) and malformed rows,
runs read -> validate -> deduplicate -> decontaminate, and prints rows/s per stage and end to end,
peak RSS (and the peak RSS of a bounded-memory streaming read, in a child process), precision and
recall against the truth, and the same data through a naive baseline (a per-row Python loop:
datasketch `MinHash.update` per shingle + `MinHashLSH`, Python sets of n-grams) with the ratio.
The baseline runs on the first --naive-rows rows (its cost per row does not depend on the dataset
size); --naive-rows 0 runs it on all rows.

Targets (issue #4, 2-core machine): end to end >= 4,000 rows/s and >= 8x the naive baseline;
near-duplicate recall >= 0.95 at precision >= 0.99; contamination recall 1.0 on verbatim and >= 0.9
on lightly edited items, no false positives on clean rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fineplat.ingestion import (
    BenchmarkRegistry,
    decontaminate_rows,
    deduplicate_rows,
    generate_benchmark_sample,
    iter_raw,
)
from fineplat.ingestion.minhash import jaccard, shingle_sets, shingle_text
from fineplat.ingestion.validate import validate_batches

ROW_CHARS = 800  # target characters of conversation text per row (issue #4)
BENCHMARK_ITEMS = 400  # GSM8K-style test items generated for the registry
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
NEAR_DUPLICATE_MIN_JACCARD = 0.92  # planted edits stay clearly above the 0.9 threshold


@dataclass
class Truth:
    """Line numbers (1-based) of each planted kind."""

    exact: set[int] = field(default_factory=set)
    near: set[int] = field(default_factory=set)
    verbatim: set[int] = field(default_factory=set)
    edited: set[int] = field(default_factory=set)
    malformed: set[int] = field(default_factory=set)
    clean: set[int] = field(default_factory=set)


def _vocabulary(rng: random.Random, size: int = 30_000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def _sentence_block(rng: random.Random, vocabulary: list[str], chars: int) -> str:
    words: list[str] = []
    length = 0
    while length < chars:
        chunk = rng.choices(vocabulary, k=12)
        words.extend(chunk)
        length += sum(len(w) + 1 for w in chunk)
    text = " ".join(words)[:chars]
    return text[: text.rfind(" ")] + "."


def _clean_row(rng: random.Random, vocabulary: list[str]) -> dict:
    user = _sentence_block(rng, vocabulary, 200)
    assistant = _sentence_block(rng, vocabulary, ROW_CHARS - 200)
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _edit_words(rng: random.Random, text: str, vocabulary: list[str], edits: int) -> str:
    words = text.split(" ")
    for position in rng.sample(range(len(words)), edits):
        words[position] = rng.choice(vocabulary)
    return " ".join(words)


def _row_text(row: dict) -> str:
    return "\n".join(f"{m['role']}: {' '.join(m['content'].split())}" for m in row["messages"])


def generate(path: Path, rows: int, seed: int, benchmark_path: Path) -> Truth:
    """Write the benchmark dataset (JSONL) and return the planted truth."""
    rng = random.Random(seed)
    vocabulary = _vocabulary(rng)
    generate_benchmark_sample(benchmark_path, n=BENCHMARK_ITEMS, seed=seed)
    items = [json.loads(line) for line in benchmark_path.read_text().splitlines()]
    scale = rows / 100_000
    planted = {
        "exact": int(2_000 * scale),
        "near": int(3_000 * scale),
        "verbatim": max(1, min(int(300 * scale), BENCHMARK_ITEMS // 2)),
        "edited": max(1, min(int(300 * scale), BENCHMARK_ITEMS // 2)),
        "malformed": int(500 * scale),
    }
    clean_count = rows - sum(planted.values())
    clean = [_clean_row(rng, vocabulary) for _ in range(clean_count)]
    # Slots: clean rows first in random order, then planted rows inserted after their originals.
    entries: list[tuple[str, str]] = [("clean", json.dumps(row)) for row in clean]
    for _ in range(planted["exact"]):
        original = rng.randrange(clean_count)
        copy = json.loads(entries[original][1])
        copy["messages"][1]["content"] = "  " + copy["messages"][1]["content"].replace(
            " ", "  ", 3
        )  # spacing only
        entries.append(("exact", json.dumps(copy)))
    near_originals = rng.sample(range(clean_count), planted["near"])
    for original in near_originals:
        source = clean[original]
        while True:
            copy = json.loads(json.dumps(source))
            copy["messages"][1]["content"] = _edit_words(rng, copy["messages"][1]["content"], vocabulary, 2)
            copy["messages"][0]["content"] = _edit_words(rng, copy["messages"][0]["content"], vocabulary, 1)
            a, b = shingle_sets(shingle_text([_row_text(source), _row_text(copy)]))
            if jaccard(a, b) >= NEAR_DUPLICATE_MIN_JACCARD:
                break
        entries.append(("near", json.dumps(copy)))
    chosen_items = rng.sample(items, planted["verbatim"] + planted["edited"])
    for item in chosen_items[: planted["verbatim"]]:
        row = {
            "messages": [
                {"role": "user", "content": f"Solve this problem step by step. {item['question']}"},
                {"role": "assistant", "content": item["answer"]},
            ]
        }
        entries.append(("verbatim", json.dumps(row)))
    for item in chosen_items[planted["verbatim"] :]:
        question = _edit_words(
            rng, item["question"], ["several", "many", "seven", "blue", "quickly", "market"], 2
        )
        row = {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": _sentence_block(rng, vocabulary, 300)},
            ]
        }
        entries.append(("edited", json.dumps(row)))
    malformed_kinds = [
        b'{"messages": [{"role": "user", "content": "unterminated',
        json.dumps({"messages": [{"role": "user", "content": "no answer here"}]}).encode(),
        json.dumps(
            {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}
        ).encode(),
        json.dumps(
            {"messages": [{"role": "user", "content": "   "}, {"role": "assistant", "content": "y"}]}
        ).encode(),
        json.dumps({"messages": "not a list"}).encode(),
        b'{"messages": [{"role": "user", "content": "latin-1 byte \xff"}, {"role": "assistant", "content": "y"}]}',
    ]
    for index in range(planted["malformed"]):
        entries.append(("malformed", malformed_kinds[index % len(malformed_kinds)].decode("latin-1")))
    # Planted rows go after all clean rows (so an edited copy never precedes its original), shuffled.
    clean_entries, planted_entries = entries[:clean_count], entries[clean_count:]
    rng.shuffle(planted_entries)
    truth = Truth()
    with open(path, "wb") as handle:
        for line, (kind, text) in enumerate(clean_entries + planted_entries, start=1):
            getattr(truth, kind).add(line)
            handle.write((text.encode("latin-1") if kind == "malformed" else text.encode("utf-8")) + b"\n")
    return truth


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_peak(mode: str, path: Path, batch_size: int = 10_000) -> float:
    """Growth of peak RSS (MB, VmHWM: per process image, unlike ru_maxrss which a child inherits
    from its parent across exec) of a child process that reads `path` streaming or whole."""
    code = (
        "from fineplat.ingestion import iter_raw, read_raw\n"
        "def peak():\n"
        "    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "    return int(line.split()[1]) / 1024\n"
        f"mode, path = {mode!r}, {str(path)!r}\n"
        "base = peak()\n"
        "rows = 0\n"
        "if mode == 'stream':\n"
        f"    for batch in iter_raw(path, batch_size={batch_size}): rows += batch.height\n"
        "else:\n"
        "    rows = read_raw(path).height\n"
        "print(rows, base, peak())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[2]) - float(out[1])


def naive_baseline(path: Path, benchmark_path: Path, limit: int) -> tuple[int, float, float]:
    """A per-row Python loop: parse, check, SHA-256, datasketch MinHash.update per shingle + LSH,
    Python sets of word 13-grams against the benchmark's set. Returns (rows, wall s, cpu s)."""
    from datasketch import MinHash, MinHashLSH

    punctuation = re.compile(r"[^\w\s]")
    bench_grams: set[tuple[str, ...]] = set()
    for line in benchmark_path.read_text().splitlines():
        item = json.loads(line)
        words = punctuation.sub("", f"{item['question']} {item['answer']}".lower()).split()
        bench_grams.update(tuple(words[i : i + 13]) for i in range(len(words) - 12))
    start, start_cpu = time.perf_counter(), time.process_time()
    lsh = MinHashLSH(threshold=0.9, num_perm=128)
    seen: set[str] = set()
    rows = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if limit and rows >= limit:
                break
            rows += 1
            try:
                row = json.loads(raw.decode("utf-8"))
                messages = row["messages"]
                if not messages or messages[-1]["role"] != "assistant":
                    continue
            except (ValueError, KeyError, TypeError):
                continue
            text = "\n".join(f"{m['role']}: {' '.join(str(m['content']).split())}" for m in messages)
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            lowered = " ".join(text.lower().split())
            minhash = MinHash(num_perm=128)
            for i in range(len(lowered) - 4):
                minhash.update(lowered[i : i + 5].encode("utf-8"))
            if lsh.query(minhash):
                continue
            lsh.insert(number, minhash)
            words = punctuation.sub("", lowered).split()
            _ = any(tuple(words[i : i + 13]) in bench_grams for i in range(len(words) - 12))
    return rows, time.perf_counter() - start, time.process_time() - start_cpu


def _precision_recall(found: set[int], truth: set[int]) -> tuple[float, float]:
    hits = len(found & truth)
    precision = hits / len(found) if found else 1.0
    recall = hits / len(truth) if truth else 1.0
    return precision, recall


def main() -> None:
    """Generate, run, measure, print."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--naive-rows", type=int, default=1_000, help="rows for the naive baseline (0 = all)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--base-model", default=None, help="also count tokens with this base model's chat template"
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ingest_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    data_path, benchmark_path = workdir / "chat.jsonl", workdir / "gsm8k-sample.jsonl"

    clock = time.perf_counter()
    truth = generate(data_path, args.rows, args.seed, benchmark_path)
    size_mb = data_path.stat().st_size / 2**20
    print(
        f"generated {args.rows} rows ({size_mb:.0f} MiB) in {time.perf_counter() - clock:.1f}s -> {data_path}"
    )
    print(
        f"planted: exact {len(truth.exact)}, near {len(truth.near)}, contaminated verbatim {len(truth.verbatim)}, "
        f"edited {len(truth.edited)}, malformed {len(truth.malformed)}"
    )

    registry = BenchmarkRegistry()
    registry.add("gsm8k-sample", benchmark_path)
    rss_before = _rss_mb()
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    load_before = os.getloadavg()[0]

    def timed(stage: str, call):  # type: ignore[no-untyped-def]
        wall, processor = time.perf_counter(), time.process_time()
        value = call()
        timings[stage] = time.perf_counter() - wall
        cpu[stage] = time.process_time() - processor
        return value

    rows_read = timed("read", lambda: sum(batch.height for batch in iter_raw(data_path, batch_size=10_000)))
    tokenizer = None
    if args.base_model:
        from fineplat.basemodel import load_tokenizer, resolve_base_model

        tokenizer = load_tokenizer(resolve_base_model(args.base_model).path)
    validated = timed(
        "read+validate", lambda: validate_batches(iter_raw(data_path, batch_size=10_000), tokenizer=tokenizer)
    )
    deduplicated = timed("deduplicate", lambda: deduplicate_rows(validated.kept))
    decontaminated = timed("decontaminate", lambda: decontaminate_rows(deduplicated.kept, registry))
    # End to end = streaming read+validate, deduplicate, decontaminate (the read-only pass is
    # measured separately to show the reader's own throughput).
    total_seconds = sum(seconds for stage, seconds in timings.items() if stage != "read")
    total_cpu = sum(seconds for stage, seconds in cpu.items() if stage != "read")
    peak = _rss_mb()

    print(
        f"\nload average before the run: {load_before:.1f} on {os.cpu_count()} cores (other users share this machine)"
    )
    print("stage           rows in  wall s   rows/s(wall)   cpu s")
    rows_in = validated.report["rows_in"]
    assert rows_in == rows_read
    stage_rows = {
        "read": rows_read,
        "read+validate": rows_in,
        "deduplicate": validated.kept.height,
        "decontaminate": deduplicated.kept.height,
    }
    for stage, seconds in timings.items():
        print(
            f"{stage:<14}{stage_rows[stage]:>9}{seconds:>8.2f}{stage_rows[stage] / seconds:>14.0f}{cpu[stage]:>10.2f}"
        )
    end_to_end = rows_in / total_seconds
    print(f"{'end to end':<14}{rows_in:>9}{total_seconds:>8.2f}{end_to_end:>14.0f}{total_cpu:>10.2f}")
    print(f"peak RSS {peak:.0f} MB (before ingestion {rss_before:.0f} MB; file {size_mb:.0f} MiB)")

    # Reading memory in child processes (peak RSS growth over imports): it follows the batch size,
    # not the file size. The whole pipeline's peak above also holds the normalized rows and sketches.
    quarter = workdir / "quarter.jsonl"
    with open(data_path, "rb") as source, open(quarter, "wb") as target:
        for index, line in enumerate(source):
            if index % 4 == 0:
                target.write(line)
    peaks = {
        "whole file, batch 10000": _child_peak("stream", data_path, 10_000),
        "whole file, batch 2500": _child_peak("stream", data_path, 2_500),
        "quarter file, batch 10000": _child_peak("stream", quarter, 10_000),
        "whole file, read_raw (no batching)": _child_peak("whole", data_path),
    }
    print(
        "reading memory, peak RSS growth in a child process: "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in peaks.items())
    )

    rejected_lines = {
        stage: set(result.rejected.get_column("line").to_list())
        for stage, result in (
            ("validate", validated),
            ("dedup", deduplicated),
            ("decontaminate", decontaminated),
        )
    }
    reasons = {
        line: reasons
        for line, reasons in zip(
            deduplicated.rejected["line"].to_list(), deduplicated.rejected["reasons"].to_list(), strict=True
        )
    }
    near_found = {line for line, codes in reasons.items() if "near_duplicate" in codes}
    exact_found = {line for line, codes in reasons.items() if "exact_duplicate" in codes}
    near_p, near_r = _precision_recall(near_found, truth.near)
    exact_p, exact_r = _precision_recall(exact_found, truth.exact)
    contaminated = rejected_lines["decontaminate"]
    verbatim_recall = len(contaminated & truth.verbatim) / len(truth.verbatim)
    edited_recall = len(contaminated & truth.edited) / len(truth.edited)
    false_positives = len(contaminated & truth.clean)
    malformed_recall = len(rejected_lines["validate"] & truth.malformed) / max(len(truth.malformed), 1)
    print("\nquality against planted truth")
    print(f"exact duplicates:  precision {exact_p:.4f}  recall {exact_r:.4f}")
    print(
        f"near duplicates:   precision {near_p:.4f}  recall {near_r:.4f}   (target recall >= 0.95 at precision >= 0.99)"
    )
    print(
        f"contamination:     verbatim recall {verbatim_recall:.3f}  edited recall {edited_recall:.3f}  false positives on clean rows {false_positives}"
    )
    print(
        f"malformed rows:    recall {malformed_recall:.3f}  (validation rejected {validated.rejected.height})"
    )
    totals = (
        validated.kept.height,
        validated.rejected.height,
        deduplicated.rejected.height,
        decontaminated.rejected.height,
    )
    print(
        f"totals: rows_in {rows_in} = kept {decontaminated.kept.height} + quarantined {totals[1]} + duplicates "
        f"{totals[2]} + contaminated {totals[3]}: {rows_in == decontaminated.kept.height + sum(totals[1:])}"
    )

    naive_rows, naive_seconds, naive_cpu = naive_baseline(data_path, benchmark_path, args.naive_rows)
    naive_rate = naive_rows / naive_seconds
    naive_cpu_rate = naive_rows / naive_cpu
    print(
        f"\nnaive baseline: {naive_rows} rows in {naive_seconds:.2f}s wall ({naive_cpu:.2f}s cpu) = {naive_rate:.0f} rows/s"
    )
    cpu_rate = rows_in / total_cpu
    print(
        f"ratio end to end / naive: {end_to_end / naive_rate:.1f}x wall, {cpu_rate / naive_cpu_rate:.1f}x cpu"
    )
    load_after = os.getloadavg()[0]
    checks = [
        (
            f"end to end >= 4,000 rows/s (wall {end_to_end:.0f}, per cpu-second {cpu_rate:.0f})",
            end_to_end >= 4_000,
        ),
        (f">= 8x the naive baseline ({end_to_end / naive_rate:.1f}x)", end_to_end / naive_rate >= 8),
        (
            f"near-duplicate recall >= 0.95 at precision >= 0.99 ({near_r:.4f} / {near_p:.4f})",
            near_r >= 0.95 and near_p >= 0.99,
        ),
        (f"contamination recall 1.0 verbatim ({verbatim_recall:.3f})", verbatim_recall == 1.0),
        (f"contamination recall >= 0.9 lightly edited ({edited_recall:.3f})", edited_recall >= 0.9),
        (f"no contamination false positives on clean rows ({false_positives})", false_positives == 0),
    ]
    print(
        f"\ntargets (load average {load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} cores):"
    )
    for label, passed in checks:
        print(f"  {'PASS' if passed else 'FAIL'}  {label}")


if __name__ == "__main__":
    main()
