"""The demo's sample dataset: customer support messages the assistant must route to the right
queue, replying with the queue's name alone. The base model answers such messages with
pleasantries; a LoRA adapter learns the task.

The shipped file (fineplat/demo/data/tickets.jsonl) is this generator's output with flaws planted
the way real exports have them: malformed JSON lines, wrong role order, empty replies, exact and
near duplicates, and rows copied from the benchmark sample. `tests/demo/test_sample_dataset.py`
checks the shipped file equals the generator's output."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from fineplat.basemodel.corpus import ADJECTIVES, GREETINGS, QUEUE_SUBJECTS, pseudo_word, ticket_code

DATA_DIR = Path(__file__).parent / "data"
SAMPLE_DATASET = DATA_DIR / "tickets.jsonl"
SAMPLE_BENCHMARK = DATA_DIR / "gsm8k-sample.jsonl"  # a GSM8K-style test split the project generates
SAMPLE_CLEAN_ROWS = 1500
SAMPLE_SEED = 20261128
INSTRUCTIONS = [
    "Route this customer message to the right team: billing, shipping, technical or account.",
    "Which team should handle this message (billing, shipping, technical, account)?",
    "Which support team does this ticket go to?",
]
MESSAGE_TEMPLATES = [
    "My {subject} is {adj} and I need help, ticket {code}.",
    "Please look at ticket {code}: something is wrong with the {subject}.",
    "I wrote yesterday about the {adj} {subject} ({code}) and nobody answered.",
    "Reference {code}. The {subject} has been {adj} since Monday.",
    "Can you check my {subject}? It is {adj}. My ticket is {code}.",
    "Question about the {subject} please, see {code}.",
]


@dataclass(frozen=True)
class PlantedFlaws:
    """How many of each flaw the sample carries (the demo's summary is checked against these)."""

    malformed_json: int = 3
    wrong_role_order: int = 3
    empty_reply: int = 2
    exact_duplicates: int = 12
    near_duplicates: int = 12
    contaminated: int = 4


def task_row(rng: random.Random) -> dict:
    """One clean example of the routing task."""
    queue = rng.choice(sorted(QUEUE_SUBJECTS))
    subject = rng.choice(QUEUE_SUBJECTS[queue])
    body = rng.choice(MESSAGE_TEMPLATES).format(
        subject=subject, adj=rng.choice(ADJECTIVES), code=ticket_code(rng)
    )
    message = f"{rng.choice(GREETINGS)}, this is {pseudo_word(rng).capitalize()}. {body}"
    return {
        "messages": [
            {"role": "user", "content": f"{rng.choice(INSTRUCTIONS)}\n\n{message}"},
            {"role": "assistant", "content": f"The {queue} team."},
        ]
    }


def generate_sample_lines(
    clean_rows: int,
    benchmark_questions: list[str],
    flaws: PlantedFlaws = PlantedFlaws(),
    seed: int = SAMPLE_SEED,
) -> list[str]:
    """The sample dataset as JSONL lines, flaws interleaved at deterministic positions."""
    rng = random.Random(seed)
    clean = [task_row(rng) for _ in range(clean_rows)]
    lines = [json.dumps(row) for row in clean]
    planted: list[str] = []
    for i in range(flaws.malformed_json):
        planted.append(json.dumps(clean[i])[: 40 + i * 7])  # a line cut short, as an interrupted export
    for i in range(flaws.wrong_role_order):
        row = clean[10 + i]["messages"]
        planted.append(json.dumps({"messages": [row[1], row[0]]}))
    for i in range(flaws.empty_reply):
        planted.append(
            json.dumps({"messages": [clean[20 + i]["messages"][0], {"role": "assistant", "content": "  "}]})
        )
    for i in range(flaws.exact_duplicates):
        planted.append(lines[30 + i])
    for i in range(flaws.near_duplicates):
        row = json.loads(lines[60 + i])
        row["messages"][0]["content"] += " Thanks!"
        planted.append(json.dumps(row))
    for i in range(flaws.contaminated):
        question = benchmark_questions[i]
        planted.append(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": "I will work it out."},
                    ]
                }
            )
        )
    for line in planted:
        lines.insert(rng.randrange(len(lines) + 1), line)
    return lines


def benchmark_questions(path: Path = SAMPLE_BENCHMARK) -> list[str]:
    """The questions of the shipped benchmark sample (some are planted in the dataset)."""
    return [
        json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def write_shipped_files(data_dir: Path = DATA_DIR) -> tuple[Path, Path]:
    """Regenerate the shipped benchmark sample and sample dataset (deterministic)."""
    from fineplat.ingestion.benchmarks import generate_benchmark_sample

    benchmark = generate_benchmark_sample(data_dir / SAMPLE_BENCHMARK.name, name="gsm8k-sample", n=50, seed=0)
    dataset = data_dir / SAMPLE_DATASET.name
    lines = generate_sample_lines(SAMPLE_CLEAN_ROWS, benchmark_questions(benchmark))
    dataset.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dataset, benchmark


if __name__ == "__main__":
    for written in write_shipped_files():
        print(f"wrote {written}")
