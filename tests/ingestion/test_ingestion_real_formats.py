"""Real third-party dataset shapes are detected and normalized into the one internal form. Each
fixture reproduces the exact record layout of a public dataset family (field names, nesting,
role names, metadata fields) with made-up content."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fineplat.errors import DatasetError
from fineplat.ingestion import StageResult, read_raw, validate_rows


def _records(result: StageResult) -> list[dict[str, Any]]:
    return [json.loads(record) for record in result.kept["record"]]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_openai_fine_tuning_jsonl_with_weights_and_tool_calls(tmp_path: Path) -> None:
    # OpenAI fine-tuning format: messages with optional per-message weight, tool_calls, tools list.
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
                {"role": "user", "content": "What's the capital of France?"},
                {
                    "role": "assistant",
                    "content": "Paris, as if everyone doesn't know that already.",
                    "weight": 0,
                },
                {"role": "user", "content": "Can you be more sarcastic?"},
                {
                    "role": "assistant",
                    "content": "Paris, as if everyone doesn't know that already.",
                    "weight": 1,
                },
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "What is the weather in San Francisco?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_id",
                            "type": "function",
                            "function": {
                                "name": "get_current_weather",
                                "arguments": '{"location": "San Francisco, USA"}',
                            },
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_id", "content": "21.0"},
                {"role": "assistant", "content": "It is 21 degrees celsius in San Francisco, CA"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_current_weather", "parameters": {}}}],
        },
    ]
    result = validate_rows(read_raw(_write_jsonl(tmp_path / "openai.jsonl", rows)))
    assert result.report["schema"] == "openai"
    assert result.report["rejected"] == 0
    first, second = _records(result)
    assert first["messages"][2] == {
        "role": "assistant",
        "content": "Paris, as if everyone doesn't know that already.",
        "weight": 0,
    }
    assert "weight" not in first["messages"][4]
    assert second["messages"][1]["role"] == "assistant"
    assert json.loads(second["messages"][1]["content"])[0]["function"]["name"] == "get_current_weather"
    assert second["messages"][2] == {"role": "tool", "content": "21.0"}
    assert result.kept["kind"].to_list() == ["chat", "chat"]


def test_alpaca_json_array(tmp_path: Path) -> None:
    # tatsu-lab/alpaca's alpaca_data.json: a JSON array of instruction/input/output objects.
    path = tmp_path / "alpaca_data.json"
    path.write_text(
        json.dumps(
            [
                {
                    "instruction": "Give three tips for staying healthy.",
                    "input": "",
                    "output": "1. Eat well.\n2. Sleep.\n3. Move.",
                },
                {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
            ],
            indent=4,
        )
    )
    result = validate_rows(read_raw(path))
    assert result.report["schema"] == "alpaca"
    assert result.kept["line"].to_list() == [2, 7]
    assert _records(result) == [
        {
            "messages": [
                {"role": "user", "content": "Give three tips for staying healthy."},
                {"role": "assistant", "content": "1. Eat well.\n2. Sleep.\n3. Move."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Translate to French.\n\nGood morning"},
                {"role": "assistant", "content": "Bonjour"},
            ]
        },
    ]


def test_sharegpt_with_function_call_turns(tmp_path: Path) -> None:
    # ShareGPT (id + conversations of from/value) with LLaMA-Factory's function_call/observation turns.
    rows = [
        {
            "id": "QWJhYvA_0",
            "conversations": [
                {"from": "human", "value": "Summarize the plot of Hamlet in one line."},
                {"from": "gpt", "value": "A prince avenges his father and everyone dies."},
            ],
        },
        {
            "conversations": [
                {"from": "human", "value": "What's the stock price of ACME?"},
                {
                    "from": "function_call",
                    "value": '{"name": "get_stock_price", "arguments": {"symbol": "ACME"}}',
                },
                {"from": "observation", "value": '{"price": 12.5}'},
                {"from": "gpt", "value": "ACME trades at $12.50."},
            ],
            "system": "You can call functions.",
            "tools": '[{"name": "get_stock_price"}]',
        },
    ]
    result = validate_rows(read_raw(_write_jsonl(tmp_path / "sharegpt.jsonl", rows)))
    assert result.report["schema"] == "sharegpt"
    assert result.report["rejected"] == 0
    assert result.report["ignored_fields"] == {"id": 1}
    assert [m["role"] for m in _records(result)[1]["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert (
        _records(result)[1]["messages"][2]["content"]
        == '{"name": "get_stock_price", "arguments": {"symbol": "ACME"}}'
    )


def test_anthropic_hh_chosen_rejected_transcripts(tmp_path: Path) -> None:
    # Anthropic/hh-rlhf: only chosen/rejected, each a whole "\n\nHuman: ...\n\nAssistant: ..." transcript.
    rows = [
        {
            "chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, yeast and salt.\n\nHuman: How long?\n\nAssistant: About 40 minutes at 220C.",
            "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, yeast and salt.\n\nHuman: How long?\n\nAssistant: Buy some instead.",
        }
    ]
    result = validate_rows(read_raw(_write_jsonl(tmp_path / "hh.jsonl", rows)), purpose="dpo")
    assert result.report["schema"] == "preference"
    assert _records(result) == [
        {
            "prompt": [
                {"role": "user", "content": "How do I bake bread?"},
                {"role": "assistant", "content": "Mix flour, water, yeast and salt."},
                {"role": "user", "content": "How long?"},
            ],
            "chosen": [{"role": "assistant", "content": "About 40 minutes at 220C."}],
            "rejected": [{"role": "assistant", "content": "Buy some instead."}],
        }
    ]
    assert result.kept["kind"].to_list() == ["preference"]


def test_ultrafeedback_message_list_preferences(tmp_path: Path) -> None:
    # HuggingFaceH4/ultrafeedback_binarized: prompt string, chosen/rejected full conversations, extra fields.
    rows = [
        {
            "prompt": "Name a prime number.",
            "prompt_id": "9f1c",
            "chosen": [
                {"role": "user", "content": "Name a prime number."},
                {"role": "assistant", "content": "7"},
            ],
            "rejected": [
                {"role": "user", "content": "Name a prime number."},
                {"role": "assistant", "content": "9"},
            ],
            "messages": [
                {"role": "user", "content": "Name a prime number."},
                {"role": "assistant", "content": "7"},
            ],
            "score_chosen": 9.0,
            "score_rejected": 2.0,
        }
    ]
    result = validate_rows(read_raw(_write_jsonl(tmp_path / "uf.jsonl", rows)), purpose="dpo")
    assert result.report["schema"] == "preference"
    assert result.report["ignored_fields"] == {
        "messages": 1,
        "prompt_id": 1,
        "score_chosen": 1,
        "score_rejected": 1,
    }
    assert _records(result) == [
        {
            "prompt": [{"role": "user", "content": "Name a prime number."}],
            "chosen": [{"role": "assistant", "content": "7"}],
            "rejected": [{"role": "assistant", "content": "9"}],
        }
    ]
    # The same file for SFT trains on its `messages` column.
    sft = validate_rows(read_raw(tmp_path / "uf.jsonl"), purpose="sft")
    assert sft.report["schema"] == "openai"


def test_prompt_completion_and_string_preferences(tmp_path: Path) -> None:
    pc = validate_rows(read_raw(_write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2=", "completion": "4"}])))
    assert pc.report["schema"] == "prompt_completion"
    assert _records(pc) == [
        {"messages": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]}
    ]
    pref = validate_rows(
        read_raw(
            _write_jsonl(
                tmp_path / "pref.jsonl", [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}]
            )
        ),
        purpose="dpo",
    )
    assert _records(pref) == [
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        }
    ]


def test_plain_text_for_continued_pretraining(tmp_path: Path) -> None:
    result = validate_rows(
        read_raw(_write_jsonl(tmp_path / "cpt.jsonl", [{"text": "Once upon a time."}])), purpose="cpt"
    )
    assert _records(result) == [{"text": "Once upon a time."}]
    assert result.kept["kind"].to_list() == ["text"]
    assert result.kept["text"].to_list() == ["Once upon a time."]


def test_save_to_disk_directory_made_with_the_datasets_library(tmp_path: Path) -> None:
    import datasets

    rows = [
        {"messages": [{"role": "user", "content": "Ping"}, {"role": "assistant", "content": "Pong"}]},
        {"messages": [{"role": "user", "content": "Marco"}, {"role": "assistant", "content": "Polo"}]},
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    result = validate_rows(read_raw(tmp_path / "ds"))
    assert result.report["schema"] == "openai"
    assert _records(result) == rows
    assert result.kept["line"].to_list() == [1, 2]


def test_csv_alpaca_file(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.csv"
    path.write_text('instruction,input,output\n"Add the numbers.","2, 3",5\n')
    result = validate_rows(read_raw(path))
    assert _records(result) == [
        {
            "messages": [
                {"role": "user", "content": "Add the numbers.\n\n2, 3"},
                {"role": "assistant", "content": "5"},
            ]
        }
    ]
    assert result.kept["line"].to_list() == [2]


def test_schema_override_and_purpose_mismatch_are_explained(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "pref.jsonl", [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}]
    )
    with pytest.raises(
        DatasetError, match=r"look like preference data .* does not fit purpose 'sft'.*Use purpose='dpo'"
    ):
        validate_rows(read_raw(path), purpose="sft")
    with pytest.raises(
        DatasetError, match=r"schema 'text' holds text rows, but purpose 'sft' needs chat rows"
    ):
        validate_rows(read_raw(path), schema="text")
    # An explicit schema judges every row by it: these rows lack `completion`.
    forced = validate_rows(read_raw(path), schema="prompt_completion")
    assert forced.rejected["reasons"].to_list() == [["missing_field"]]
    assert "field completion: expected field `completion`" in forced.rejected["detail"][0]


def test_sharegpt_with_per_turn_weights(tmp_path: Path) -> None:
    # Open-Orca/SlimOrca: ShareGPT turns carrying weight null (system), 0.0 (human) and 1.0 (gpt).
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "You are an AI assistant.", "weight": None},
                {
                    "from": "human",
                    "value": "Which is heavier, a kilo of feathers or a kilo of steel?",
                    "weight": 0.0,
                },
                {"from": "gpt", "value": "They weigh the same: one kilogram each.", "weight": 1.0},
            ]
        }
    ]
    result = validate_rows(read_raw(_write_jsonl(tmp_path / "slimorca.jsonl", rows)))
    assert result.rejected.height == 0
    assert _records(result) == [
        {
            "messages": [
                {"role": "system", "content": "You are an AI assistant."},
                {"role": "user", "content": "Which is heavier, a kilo of feathers or a kilo of steel?"},
                {"role": "assistant", "content": "They weigh the same: one kilogram each."},
            ]
        }
    ]


def test_llama_factory_sharegpt_preferences_with_single_message_responses(tmp_path: Path) -> None:
    # LLaMA-Factory's data/dpo_en_demo.json (dataset_info: "ranking": true, "formatting": "sharegpt",
    # columns messages=conversations, chosen, rejected): a JSON array, 2-space indent, the prompt as
    # ShareGPT `conversations` and chosen/rejected each ONE turn object, not an array.
    path = tmp_path / "dpo_en_demo.json"
    path.write_text(
        json.dumps(
            [
                {
                    "conversations": [{"from": "human", "value": "Suggest a name for a bakery by the sea."}],
                    "chosen": {"from": "gpt", "value": 'How about "Tide & Crumb"?'},
                    "rejected": {"from": "gpt", "value": "Bakery."},
                },
                {
                    "conversations": [
                        {"from": "system", "value": "You are a patient tutor."},
                        {"from": "human", "value": "What is 7 times 8?"},
                        {"from": "gpt", "value": "56."},
                        {"from": "human", "value": "And 56 divided by 4?"},
                    ],
                    "chosen": {"from": "gpt", "value": "14, because 4 times 14 is 56."},
                    "rejected": {"from": "gpt", "value": "12."},
                },
            ],
            indent=2,
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    result = validate_rows(read_raw(path), purpose="dpo")
    assert (result.report["schema"], result.report["rejected"], result.report["ignored_fields"]) == (
        "preference",
        0,
        {},
    )
    assert _records(result) == [
        {
            "prompt": [{"role": "user", "content": "Suggest a name for a bakery by the sea."}],
            "chosen": [{"role": "assistant", "content": 'How about "Tide & Crumb"?'}],
            "rejected": [{"role": "assistant", "content": "Bakery."}],
        },
        {
            "prompt": [
                {"role": "system", "content": "You are a patient tutor."},
                {"role": "user", "content": "What is 7 times 8?"},
                {"role": "assistant", "content": "56."},
                {"role": "user", "content": "And 56 divided by 4?"},
            ],
            "chosen": [{"role": "assistant", "content": "14, because 4 times 14 is 56."}],
            "rejected": [{"role": "assistant", "content": "12."}],
        },
    ]


def test_single_message_responses_in_openai_shape_and_their_problems(tmp_path: Path) -> None:
    # The same layout with OpenAI-style objects, a ShareGPT `system` field, and a broken response object.
    rows = [
        {
            "system": "Answer in one word.",
            "prompt": [{"role": "user", "content": "Capital of Italy?"}],
            "chosen": {"role": "assistant", "content": "Rome"},
            "rejected": {"role": "assistant", "content": "Milan"},
        },
        {
            "conversations": [{"from": "human", "value": "Capital of Spain?"}],
            "chosen": {"from": "robot", "value": "Madrid"},
            "rejected": {"from": "gpt", "value": "Seville"},
        },
        {
            "prompt": "Capital of Peru?",
            "conversations": [{"from": "human", "value": "Capital of Peru?"}],
            "chosen": {"from": "gpt", "value": "Lima"},
            "rejected": {"from": "gpt", "value": "Cusco"},
        },
    ]
    result = validate_rows(read_raw(_write_jsonl(tmp_path / "pairs.jsonl", rows)), purpose="dpo")
    assert _records(result) == [
        {
            "prompt": [
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Capital of Italy?"},
            ],
            "chosen": [{"role": "assistant", "content": "Rome"}],
            "rejected": [{"role": "assistant", "content": "Milan"}],
        }
    ]
    assert result.rejected["reasons"].to_list() == [["unknown_role"], ["extra_field"]]
    details = result.rejected["detail"].to_list()
    assert details[0].startswith(
        f"{tmp_path / 'pairs.jsonl'}, line 2: field chosen.from: unknown role 'robot'"
    )
    assert details[1].endswith(
        "line 3: field conversations: expected the prompt in `prompt` or in `conversations`, not both; "
        "remove one of them."
    )


def _kto_rows() -> list[dict[str, Any]]:
    # LLaMA-Factory's data/kto_en_demo.json (dataset_info: "formatting": "sharegpt", columns
    # messages=messages, kto_tag=label; tags role/content/user/assistant): messages with `content`
    # before `role`, and a boolean `label`.
    return [
        {
            "messages": [
                {
                    "content": "Which is the best summary: (A) World (B) Sports? Spyware law news.",
                    "role": "user",
                },
                {"content": "Ooh ooh! *giggle* Sports!", "role": "assistant"},
            ],
            "label": False,
        },
        {
            "messages": [
                {"content": "Compare the hippocampus and the prefrontal cortex.", "role": "user"},
                {
                    "content": "The hippocampus forms memories; the prefrontal cortex plans.",
                    "role": "assistant",
                },
            ],
            "label": True,
        },
    ]


def _trl_unpaired_rows() -> list[dict[str, Any]]:
    # TRL's "unpaired preference" dataset type, standard and conversational: prompt, completion, label.
    return [
        {"prompt": "The sky is", "completion": " blue.", "label": True},
        {
            "prompt": [{"role": "user", "content": "What color is the sky?"}],
            "completion": [{"role": "assistant", "content": "It is green."}],
            "label": False,
        },
    ]


@pytest.mark.parametrize("purpose", ["sft", "dpo"])
@pytest.mark.parametrize(
    ("name", "rows"),
    [("kto_en_demo.json", _kto_rows()), ("unpaired_preference.json", _trl_unpaired_rows())],
)
def test_unpaired_preference_files_are_refused_with_what_to_do(
    tmp_path: Path, purpose: str, name: str, rows: list[dict[str, Any]]
) -> None:
    path = tmp_path / name
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DatasetError) as raised:
        validate_rows(read_raw(path), purpose=purpose)  # type: ignore[arg-type]
    assert str(raised.value) == (
        f"{path}: 2 of 2 rows are unpaired (KTO-style) preference data: a conversation with a boolean "
        "`label` saying whether its completion is desirable. fineplat trains SFT and paired preferences "
        "(DPO), not KTO. For SFT, keep the rows with label true and delete the `label` field; for DPO, pair "
        "a desirable and an undesirable completion of the same prompt as `chosen` and `rejected`."
    )


def test_unpaired_preference_rows_among_chat_rows_are_rejected_not_trained(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}."}]}
        for i in range(3)
    ]
    rows += [
        *_kto_rows(),
        {"messages": _kto_rows()[1]["messages"], "label": "good"},  # not a boolean: ordinary metadata
    ]
    path = _write_jsonl(tmp_path / "mixed.jsonl", rows)
    result = validate_rows(read_raw(path))
    assert result.report["schema"] == "openai"
    assert result.kept["line"].to_list() == [1, 2, 3, 6]
    assert result.rejected["reasons"].to_list() == [["unpaired_preference"]] * 2
    assert result.rejected["detail"].to_list() == [
        f"{path}, line {line}: field label: `label: {label}` marks this row as unpaired (KTO-style) "
        f"preference data, one completion judged {judged}; it is not trained as plain chat. fineplat trains "
        "SFT and paired preferences (DPO), not KTO. For SFT, keep the rows with label true and delete the "
        "`label` field; for DPO, pair a desirable and an undesirable completion of the same prompt as "
        "`chosen` and `rejected`."
        for line, label, judged in [(4, "false", "undesirable"), (5, "true", "desirable")]
    ]
    # An explicit schema skips detection; the rows are still refused one by one.
    trl = _write_jsonl(tmp_path / "trl.jsonl", _trl_unpaired_rows())
    forced = validate_rows(read_raw(trl), schema="prompt_completion")
    assert (forced.report["kept"], forced.rejected["reasons"].to_list()) == (0, [["unpaired_preference"]] * 2)
