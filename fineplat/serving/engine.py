"""The embedded multi-LoRA engine: one base model in memory, any number of LoRA adapters hot-loaded
beside it, and requests for different adapters (and the plain base) decoded together in ONE batched
`generate` through peft's mixed-batch inference (`adapter_names=[...]`, `"__base__"` for rows that
use no adapter). That is what vLLM's multi-LoRA serving does on a GPU; this engine does it on a CPU
so tests and the demo drive the same promotion flow without vLLM.

A background batcher thread collects concurrent requests for up to `batch_window_ms` (or until
`max_batch_size` are waiting), groups them by sampling mode and runs each group as one left-padded
`generate` call. Adapters load and unload under the same lock that guards generation, so a swap
waits for the batch in flight and never changes weights under it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from fineplat.basemodel import load_base_model, load_tokenizer
from fineplat.errors import ServingError
from fineplat.serving.errors import AdapterAlreadyLoadedError, ModelNotFoundError
from fineplat.serving.protocol import FinishReason

logger = logging.getLogger(__name__)

# peft's placeholder adapter name for rows that run on the plain base model in a mixed batch
# (peft/tuners/lora/layer.py `_mixed_batch_forward`).
PEFT_BASE_ADAPTER = "__base__"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # peft save_pretrained outputs
# How many batch records `stats()` keeps: enough to see recent batching behaviour, bounded memory.
RECENT_BATCHES_KEPT = 256


@dataclass(frozen=True)
class AdapterCard:
    """One loaded adapter as `/v1/models` shows it (vLLM: id = name, root = path, parent = base id)."""

    name: str
    path: str  # the lora_path exactly as the caller gave it
    parent: str  # served id of the base model the adapter runs on
    created: int  # unix seconds when it was loaded


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to produce. Exactly one of `prompt` (raw text, as /v1/completions) or `messages`
    (rendered with the base model's own chat template, as /v1/chat/completions) is set."""

    model: str  # the base model's served id, or a loaded adapter's name
    prompt: str | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    max_tokens: int | None = None  # None: the rest of the context window (vLLM's chat default)
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0
    seed: int | None = None  # makes sampling reproducible; a seeded request is decoded in its own batch
    stop: Sequence[str] = ()  # generation ends before the first occurrence of any of these strings


@dataclass(frozen=True)
class GenerationResult:
    """The text produced for one request, with the token counts and finish reason OpenAI reports."""

    model: str
    text: str
    prompt_tokens: int
    completion_tokens: int  # includes the end-of-turn token when generation stopped on it, as vLLM counts
    finish_reason: FinishReason  # "stop": end-of-turn token or stop string; "length": max_tokens reached


@dataclass(frozen=True)
class BatchRecord:
    """One `generate` call: which models its rows used, how long it took. Shows that batching happens."""

    size: int
    models: tuple[str, ...]  # per row, in batch order
    sampling: str  # "greedy", "sample" or "seeded"
    new_tokens: int  # decoding steps the batch ran
    seconds: float


@dataclass(frozen=True)
class EngineStats:
    """Counters since start plus the most recent batches (bounded by RECENT_BATCHES_KEPT)."""

    batches: int
    requests: int
    max_batch_size_seen: int
    recent_batches: list[BatchRecord]


@dataclass
class _LoadedAdapter:
    card: AdapterCard
    peft_name: str  # internal module-safe name; user names may contain '.', '/' which nn.ModuleDict rejects


class _TextStream:
    """Hands out a row's text as it is generated, holding back what may still change: a possible
    start of a stop string (its length minus one) and a trailing incomplete UTF-8 character
    (decoded as U+FFFD). The deltas concatenate to exactly the final text."""

    def __init__(self, on_text: Callable[[str], None], stops: Sequence[str]) -> None:
        self.on_text: Callable[[str], None] | None = on_text
        self.holdback = max((len(stop) for stop in stops), default=1) - 1
        self.sent = 0

    def update(self, text: str) -> None:
        end = len(text) - self.holdback
        while end > self.sent and text[end - 1] == "\ufffd":
            end -= 1
        self._send(text, end)

    def finish(self, final_text: str) -> None:
        self._send(final_text, len(final_text))

    def _send(self, text: str, end: int) -> None:
        if self.on_text is None or end <= self.sent:
            return
        delta, self.sent = text[self.sent : end], end
        try:
            self.on_text(delta)
        except Exception:  # a consumer that went away (closed event loop) must not fail the batch
            logger.debug("dropping stream consumer", exc_info=True)
            self.on_text = None


@dataclass
class _Pending:
    request: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int
    stream: _TextStream | None = None
    future: Future[GenerationResult] = field(default_factory=Future)

    @property
    def sampling_group(self) -> tuple[Any, ...]:
        """Requests share one `generate` only when they sample the same way; a seeded request runs
        alone because its random draws would otherwise depend on what it was batched with."""
        if self.request.temperature == 0:
            return ("greedy",)
        if self.request.seed is not None:
            return ("seeded", id(self))
        return ("sample", self.request.temperature, self.request.top_p)


class _PerRowStop(StoppingCriteria):
    """Per-row stop conditions inside one batched `generate`: each row has its own max_tokens and
    stop strings; records when and why each row finished so the result is cut there."""

    def __init__(
        self,
        prompt_width: int,
        max_tokens: list[int],
        stops: list[tuple[str, ...]],
        eos_ids: set[int],
        decode: Callable[[list[int]], str],
        streams: list[_TextStream | None],
    ) -> None:
        self.prompt_width = prompt_width
        self.max_tokens = max_tokens
        self.stops = stops
        self.eos_ids = eos_ids
        self.decode = decode
        self.streams = streams
        self.finished_at: list[int | None] = [None] * len(max_tokens)
        self.reasons: list[FinishReason] = ["length"] * len(max_tokens)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_width
        done: list[bool] = []
        for row, finished in enumerate(self.finished_at):
            if finished is None:
                reason: FinishReason | None = None
                stream = self.streams[row]
                ended_turn = int(input_ids[row, -1]) in self.eos_ids
                text = None
                if not ended_turn and (self.stops[row] or stream is not None):
                    text = self.decode(input_ids[row, self.prompt_width :].tolist())
                if ended_turn or (text is not None and any(stop in text for stop in self.stops[row])):
                    reason = "stop"
                elif generated >= self.max_tokens[row]:
                    reason = "length"
                if reason is not None:
                    self.finished_at[row] = generated
                    self.reasons[row] = reason
                elif stream is not None and text is not None:
                    stream.update(text)
            done.append(self.finished_at[row] is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class MultiLoraEngine:
    """A base model plus hot-swappable LoRA adapters, decoding mixed-adapter batches in one `generate`.

    Use as a context manager (or call `close()`) so the batcher thread stops with it.
    """

    def __init__(
        self,
        base_model_dir: Path,
        *,
        served_model_name: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        max_batch_size: int = 16,
        batch_window_ms: float = 5,
    ) -> None:
        if max_batch_size < 1:
            raise ServingError(f"max_batch_size: expected an integer >= 1, got {max_batch_size}.")
        if batch_window_ms < 0:
            raise ServingError(f"batch_window_ms: expected a number >= 0, got {batch_window_ms}.")
        self.base_model_dir = Path(base_model_dir)
        self.model_id = served_model_name or self.base_model_dir.name
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_ms / 1000.0
        self.created = int(time.time())

        self._tokenizer = load_tokenizer(self.base_model_dir)
        # Fast tokenizers raise "Already borrowed" when encodes overlap across threads.
        self._tokenizer_lock = threading.Lock()
        self._device = torch.device(device)
        self._base_model = load_base_model(self.base_model_dir, dtype=dtype).to(self._device)
        self._model: Any = self._base_model  # becomes a PeftModel with the first adapter
        self.max_model_len = int(getattr(self._base_model.config, "max_position_embeddings", 2048))
        self._eos_ids = self._end_token_ids()

        self._adapters: dict[str, _LoadedAdapter] = {}
        self._peft_names = (f"adapter_{i}" for i in itertools.count())
        self._model_lock = threading.RLock()  # guards adapter structure and every forward pass

        self._batches = 0
        self._requests = 0
        self._max_batch_seen = 0
        self._recent: deque[BatchRecord] = deque(maxlen=RECENT_BATCHES_KEPT)
        self._stats_lock = threading.Lock()

        self._queue: Queue[list[_Pending] | None] = Queue()
        self._closed = False
        self._batcher = threading.Thread(
            target=self._batch_loop, name="fineplat-serving-batcher", daemon=True
        )
        self._batcher.start()

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop the batcher after the batch in flight; requests still queued fail with ServingError."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._batcher.join(timeout=60)

    def __enter__(self) -> MultiLoraEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- adapters

    def adapters(self) -> list[AdapterCard]:
        """The loaded adapters, in load order."""
        with self._model_lock:
            return [loaded.card for loaded in self._adapters.values()]

    def load_adapter(self, name: str, path: str | Path) -> AdapterCard:
        """Load a peft LoRA adapter directory (`save_pretrained` output) under a new, unique `name`.

        Raises AdapterAlreadyLoadedError for a name in use (vLLM would serve a stale cache on a
        reload: publish a new version under a new name instead), ModelNotFoundError when the directory
        holds no adapter, and ServingError when the adapter does not fit this base model.
        """
        if not name or name in (self.model_id, PEFT_BASE_ADAPTER):
            raise ServingError(
                f"lora_name {name!r}: expected a non-empty name other than the base model id "
                f"{self.model_id!r} and {PEFT_BASE_ADAPTER!r}."
            )
        adapter_dir = Path(path).expanduser()
        config = self._validate_adapter_dir(name, adapter_dir)
        with self._model_lock:
            if name in self._adapters:
                raise AdapterAlreadyLoadedError(f"The lora adapter '{name}' has already been loaded.")
            self._check_adapter_tensors(name, adapter_dir, config)
            peft_name = next(self._peft_names)
            self._attach(peft_name, adapter_dir, name)
            card = AdapterCard(name=name, path=str(path), parent=self.model_id, created=int(time.time()))
            self._adapters[name] = _LoadedAdapter(card=card, peft_name=peft_name)
        logger.info("loaded LoRA adapter %r from %s", name, adapter_dir)
        return card

    def unload_adapter(self, name: str) -> None:
        """Remove an adapter; requests still queued for it fail with ModelNotFoundError."""
        with self._model_lock:
            loaded = self._adapters.pop(name, None)
            if loaded is None:
                raise ModelNotFoundError(f"The lora adapter '{name}' cannot be found.")
            self._detach(loaded.peft_name)
        logger.info("unloaded LoRA adapter %r", name)

    def _validate_adapter_dir(self, name: str, adapter_dir: Path) -> dict[str, Any]:
        config_file = adapter_dir / ADAPTER_CONFIG_FILE
        if not config_file.is_file() or not any((adapter_dir / f).is_file() for f in ADAPTER_WEIGHT_FILES):
            raise ModelNotFoundError(
                f"Loading lora {name} failed: No adapter found for {adapter_dir}: expected a directory with "
                f"{ADAPTER_CONFIG_FILE} and {' or '.join(ADAPTER_WEIGHT_FILES)} as written by peft's save_pretrained."
            )
        try:
            config = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ServingError(
                f"{config_file}: not valid JSON ({exc}); re-save the adapter with peft."
            ) from exc
        if not isinstance(config, dict) or config.get("peft_type") != "LORA":
            found = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
            raise ServingError(
                f"{config_file}: peft_type {found!r}; the serving pool serves LoRA adapters only."
            )
        if config.get("task_type") not in (None, "CAUSAL_LM"):
            raise ServingError(f"{config_file}: task_type {config.get('task_type')!r}; expected 'CAUSAL_LM'.")
        if config.get("use_dora"):
            raise ServingError(
                f"{config_file}: use_dora is true; peft's mixed-adapter batches do not support DoRA. "
                "Merge the DoRA adapter into a model or retrain with plain LoRA."
            )
        return config

    def _check_adapter_tensors(self, name: str, adapter_dir: Path, config: dict[str, Any]) -> None:
        """Every LoRA tensor must sit on a module of this base model with matching shapes, so an
        adapter trained on another base fails here with a clear message, not deep inside peft."""
        weights = adapter_dir / ADAPTER_WEIGHT_FILES[0]
        if not weights.is_file():
            return  # legacy .bin adapters: peft's own shape checks apply when loading
        from safetensors import safe_open

        modules = dict(self._base_model.named_modules())
        with safe_open(str(weights), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
        if not shapes:
            raise ServingError(
                f"{weights}: holds no tensors; re-save the adapter with peft's save_pretrained."
            )
        for key, shape in sorted(shapes.items()):
            # peft saves full copies of tied/embedding layers under the wrapper's name (`lm_head.base_layer.weight`)
            module_key = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
            expected = _expected_adapter_shape(module_key, shape, modules)
            if expected is None:
                raise ServingError(
                    f"{weights}: tensor {key} targets no module of base model {self.model_id!r} "
                    f"({self._base_model.config.model_type}); was adapter {name!r} trained on another base model?"
                )
            if expected != shape:
                raise ServingError(
                    f"{weights}: tensor {key} has shape {list(shape)}, base model {self.model_id!r} expects "
                    f"{list(expected)}; adapter {name!r} was trained on a different base model "
                    f"({config.get('base_model_name_or_path')!r})."
                )

    def _attach(self, peft_name: str, adapter_dir: Path, name: str) -> None:
        from peft import PeftModel

        first = not self._adapters
        try:
            if first:
                self._model = PeftModel.from_pretrained(
                    self._base_model, str(adapter_dir), adapter_name=peft_name
                )
            else:
                self._model.load_adapter(str(adapter_dir), adapter_name=peft_name)
            self._model.eval()
        except Exception as exc:  # peft raises ValueError/RuntimeError/KeyError for unusable adapters
            self._recover_after_failed_attach(peft_name, first)
            raise ServingError(f"Loading lora {name} failed: {type(exc).__name__}: {exc}") from exc

    def _recover_after_failed_attach(self, peft_name: str, first: bool) -> None:
        if first:
            if self._model is not self._base_model:
                self._model.unload()  # removes injected LoRA layers, restores the original modules
            self._model = self._base_model
        elif peft_name in getattr(self._model, "peft_config", {}):
            self._model.delete_adapter(peft_name)

    def _detach(self, peft_name: str) -> None:
        if not self._adapters:
            # PeftModel cannot run without an adapter: strip the LoRA layers and serve the plain base.
            self._model.unload()
            self._model = self._base_model
        else:
            with (
                warnings.catch_warnings()
            ):  # "adapter was active, now deleted": expected, rows name their adapter
                warnings.simplefilter("ignore", UserWarning)
                self._model.delete_adapter(peft_name)

    # ----------------------------------------------------------------- generation

    def submit(
        self, request: GenerationRequest, on_text: Callable[[str], None] | None = None
    ) -> Future[GenerationResult]:
        """Queue one request for the batcher; validation errors raise here, before queueing.

        `on_text`, if given, receives the completion text in pieces as it is generated (called on
        the batcher thread; the pieces concatenate to the result's text, all delivered before the
        future resolves). It is how the server streams server-sent events.
        """
        pending = self._prepare(request)
        if on_text is not None:
            pending.stream = _TextStream(on_text, request.stop)
        self._enqueue([pending])
        return pending.future

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Run the requests and wait for all of them. They are queued as one unit, so requests that
        sample the same way (all greedy ones, for instance) share one `generate` call."""
        pending = [self._prepare(request) for request in requests]
        self._enqueue(pending)
        return [item.future.result() for item in pending]

    def stats(self) -> EngineStats:
        """Batching counters: how many `generate` calls ran, with which sizes and models."""
        with self._stats_lock:
            return EngineStats(self._batches, self._requests, self._max_batch_seen, list(self._recent))

    def _enqueue(self, pending: list[_Pending]) -> None:
        if self._closed:
            raise ServingError("the serving engine is shut down; start a new one.")
        self._queue.put(pending)

    def _prepare(self, request: GenerationRequest) -> _Pending:
        if request.model != self.model_id and request.model not in self._adapters:
            raise ModelNotFoundError(f"The model `{request.model}` does not exist.", param="model")
        if (request.prompt is None) == (request.messages is None):
            raise ServingError(
                "request: expected exactly one of `prompt` (completions) or `messages` (chat)."
            )
        if request.temperature < 0:
            raise ServingError(f"temperature: expected a number >= 0, got {request.temperature}.")
        if not 0 < request.top_p <= 1:
            raise ServingError(f"top_p: expected a number in (0, 1], got {request.top_p}.")
        if request.max_tokens is not None and request.max_tokens < 1:
            raise ServingError(f"max_tokens: expected an integer >= 1, got {request.max_tokens}.")
        if any(not stop for stop in request.stop):
            raise ServingError("stop: expected non-empty strings.")
        prompt_ids = self._tokenize(request)
        if not prompt_ids:
            raise ServingError("prompt: empty after tokenization; send at least one character.")
        room = self.max_model_len - len(prompt_ids)
        max_tokens = request.max_tokens if request.max_tokens is not None else room
        if max_tokens > room or room < 1:
            raise ServingError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."
            )
        return _Pending(request=request, prompt_ids=prompt_ids, max_tokens=max_tokens)

    def _tokenize(self, request: GenerationRequest) -> list[int]:
        with self._tokenizer_lock:
            if request.prompt is not None:
                return list(self._tokenizer(request.prompt)["input_ids"])
            try:
                encoded = self._tokenizer.apply_chat_template(
                    list(request.messages or []), add_generation_prompt=True, tokenize=True, return_dict=True
                )
            except Exception as exc:  # jinja raises TemplateError / TypeError for malformed messages
                raise ServingError(
                    f"messages: the chat template of {self.model_id!r} rejected them ({type(exc).__name__}: {exc}); "
                    "expected a list of {'role': ..., 'content': ...} objects."
                ) from exc
            return list(encoded["input_ids"])

    def _end_token_ids(self) -> set[int]:
        ids: set[int] = set()
        configured = getattr(self._base_model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(int(token) for token in configured)
        if self._tokenizer.eos_token_id is not None:
            ids.add(int(self._tokenizer.eos_token_id))
        return ids

    # ----------------------------------------------------------------- batcher

    def _batch_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            pending = list(first)
            deadline = time.monotonic() + self.batch_window_s
            while len(pending) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    more = self._queue.get(timeout=remaining)
                except Empty:
                    break
                if more is None:
                    stopping = True
                    break
                pending.extend(more)
            for group in self._groups(pending):
                self._run_group(group)
        self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except Empty:
                return
            for pending in item or []:
                if not pending.future.done():
                    pending.future.set_exception(
                        ServingError("the serving engine shut down before this request ran.")
                    )

    def _groups(self, pending: list[_Pending]) -> Iterator[list[_Pending]]:
        groups: dict[tuple[Any, ...], list[_Pending]] = {}
        for item in pending:
            groups.setdefault(item.sampling_group, []).append(item)
        for group in groups.values():
            for start in range(0, len(group), self.max_batch_size):
                yield group[start : start + self.max_batch_size]

    def _run_group(self, group: list[_Pending]) -> None:
        runnable = [item for item in group if item.future.set_running_or_notify_cancel()]
        try:
            with self._model_lock:
                live = []
                for item in runnable:
                    if item.request.model == self.model_id or item.request.model in self._adapters:
                        live.append(item)
                    else:  # unloaded while it waited in the queue
                        item.future.set_exception(
                            ModelNotFoundError(
                                f"The model `{item.request.model}` does not exist.", param="model"
                            )
                        )
                if live:
                    for item, result in zip(live, self._generate_batch(live), strict=True):
                        item.future.set_result(result)
        except Exception as exc:
            logger.exception("batch of %d failed", len(runnable))
            for item in runnable:
                if not item.future.done():
                    item.future.set_exception(exc)

    def _generate_batch(self, batch: list[_Pending]) -> list[GenerationResult]:
        """One left-padded `generate` over rows that may each use a different adapter."""
        started = time.perf_counter()
        width = max(len(item.prompt_ids) for item in batch)
        pad_id = int(self._tokenizer.pad_token_id)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            input_ids[row, width - len(item.prompt_ids) :] = torch.tensor(item.prompt_ids, dtype=torch.long)
            attention_mask[row, width - len(item.prompt_ids) :] = 1

        def decode(ids: list[int]) -> str:
            return str(self._tokenizer.decode(ids, skip_special_tokens=True))

        stopper = _PerRowStop(
            width,
            [item.max_tokens for item in batch],
            [tuple(item.request.stop) for item in batch],
            self._eos_ids,
            decode,
            [item.stream for item in batch],
        )
        first = batch[0].request
        sampling: dict[str, Any] = {"do_sample": False}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p, "top_k": 0}
        kwargs: dict[str, Any] = {
            "input_ids": input_ids.to(self._device),
            "attention_mask": attention_mask.to(self._device),
            "max_new_tokens": max(item.max_tokens for item in batch),
            "stopping_criteria": StoppingCriteriaList([stopper]),
            "pad_token_id": pad_id,
            "eos_token_id": sorted(self._eos_ids),
            **sampling,
        }
        if self._model is not self._base_model:
            kwargs["adapter_names"] = [self._peft_adapter_name(item.request.model) for item in batch]
        with torch.inference_mode(), _seeded_rng(first.seed if first.temperature > 0 else None, self._device):
            output = self._model.generate(**kwargs)

        results = []
        for row, item in enumerate(batch):
            generated = output[row, width:].tolist()
            finished_at = stopper.finished_at[row]
            count = finished_at if finished_at is not None else len(generated)
            reason: FinishReason = stopper.reasons[row] if finished_at is not None else "length"
            tokens = generated[:count]
            if tokens and tokens[-1] in self._eos_ids:
                tokens = tokens[:-1]
            text = decode(tokens)
            cut = min((i for i in (text.find(stop) for stop in item.request.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
            if item.stream is not None:
                item.stream.finish(text)
            results.append(GenerationResult(item.request.model, text, len(item.prompt_ids), count, reason))
        self._record(batch, output.shape[1] - width, time.perf_counter() - started)
        return results

    def _peft_adapter_name(self, model: str) -> str:
        return PEFT_BASE_ADAPTER if model == self.model_id else self._adapters[model].peft_name

    def _record(self, batch: list[_Pending], new_tokens: int, seconds: float) -> None:
        first = batch[0].request
        sampling = "greedy" if first.temperature == 0 else ("seeded" if first.seed is not None else "sample")
        record = BatchRecord(
            len(batch), tuple(item.request.model for item in batch), sampling, new_tokens, round(seconds, 4)
        )
        with self._stats_lock:
            self._batches += 1
            self._requests += len(batch)
            self._max_batch_seen = max(self._max_batch_seen, len(batch))
            self._recent.append(record)
        logger.debug("batch %s", record)


@contextlib.contextmanager
def _seeded_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Fork the RNG for a seeded request so the seed reproduces its sample and global state is untouched."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _unwrapped(module: Any) -> Any:
    """The original layer under peft's wrappers (LoRA layers keep it as `base_layer`, modules_to_save
    as `original_module`); once an adapter is loaded the base model's modules are wrapped in place."""
    while True:
        inner = getattr(module, "base_layer", None) or getattr(module, "original_module", None)
        if inner is None:
            return module
        module = inner


def _expected_adapter_shape(
    key: str, shape: tuple[int, ...], modules: dict[str, Any]
) -> tuple[int, ...] | None:
    """The shape a saved adapter tensor must have on this base model, or None if it targets nothing.

    peft saves `<module>.lora_A.weight` as (r, in_features) and `<module>.lora_B.weight` as
    (out_features, r); embeddings as `lora_embedding_A` (r, num_embeddings) / `_B` (dim, r); other
    tensors (modules_to_save) under the base parameter's own name.
    """
    for marker in (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B"):
        if marker in key:
            if key.split(marker)[0] not in modules:
                return None
            layer = _unwrapped(modules[key.split(marker)[0]])
            if isinstance(layer, torch.nn.Linear):
                if key.endswith(".bias"):  # LoraConfig(lora_bias=True)
                    return (layer.out_features,)
                if marker == ".lora_A.":
                    return (shape[0], layer.in_features)
                if marker == ".lora_B.":
                    return (layer.out_features, shape[-1])
            if isinstance(layer, torch.nn.Embedding):
                if marker == ".lora_embedding_A":
                    return (shape[0], layer.num_embeddings)
                if marker == ".lora_embedding_B":
                    return (layer.embedding_dim, shape[-1])
            return shape  # other layer types (conv, transformers' Conv1D): peft's own checks apply
    module_name, _, param_name = key.rpartition(".")
    if module_name not in modules:
        return None
    param = getattr(_unwrapped(modules[module_name]), param_name, None)
    return tuple(param.shape) if isinstance(param, torch.Tensor) else None
