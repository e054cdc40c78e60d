"""Concurrent HTTP requests for different adapters and the base model are decoded in ONE batched
generate call, and batching does not change any request's greedy output."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from fineplat.serving import EmbeddedServingPool, ServingPoolClient


def test_concurrent_requests_for_two_adapters_and_the_base_share_one_generate_call(
    batching_pool: EmbeddedServingPool, pool_client: ServingPoolClient, lora_adapters: dict[str, Path]
) -> None:
    base = batching_pool.base_model
    requests = [
        ("support-v1", "The quick brown fox"),
        ("legal.v2", "Once upon a time, in a land far away"),
        (base, "Hello there"),
    ]
    texts: dict[str, str] = {}
    start = threading.Barrier(len(requests))

    def send(model: str, prompt: str) -> None:
        start.wait()
        body = {"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0}
        response = httpx.post(f"{batching_pool.url}/v1/completions", json=body, timeout=120)
        texts[model] = response.json()["choices"][0]["text"]

    threads = [threading.Thread(target=send, args=request) for request in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)

    stats = httpx.get(f"{batching_pool.url}/stats").json()
    assert (stats["batches"], stats["requests"]) == (1, 3)
    (batch,) = stats["recent_batches"]
    assert (batch["size"], sorted(batch["models"]), batch["sampling"]) == (
        3,
        sorted(m for m, _ in requests),
        "greedy",
    )

    # The same requests one at a time on the other pool (5 ms window, sequential calls: batches of one).
    for name, path in lora_adapters.items():
        pool_client.load_adapter(name, path)
    solo_stats_before = httpx.get(f"{pool_client.base_url}/stats").json()["batches"]
    solo = {model: pool_client.complete(model, prompt, max_tokens=12) for model, prompt in requests}
    solo_stats = httpx.get(f"{pool_client.base_url}/stats").json()
    assert [b["size"] for b in solo_stats["recent_batches"]][-3:] == [1, 1, 1]
    assert solo_stats["batches"] - solo_stats_before == 3
    assert texts == solo
