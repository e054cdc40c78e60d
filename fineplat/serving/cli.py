"""`fineplat serve`: run the embedded vLLM-compatible multi-LoRA serving pool.

fineplat serve --base-model fineplat-tiny --port 8000 --adapter support-v1=/path/to/adapter
"""

from __future__ import annotations

from typing import Annotated

import typer

from fineplat.errors import FineplatError

app = typer.Typer(add_completion=False, help="The embedded multi-LoRA serving pool (vLLM's API).")


def parse_adapters(values: list[str]) -> dict[str, str]:
    """`NAME=PATH` options as a name -> path mapping; a malformed or repeated name is a usage error."""
    adapters: dict[str, str] = {}
    for value in values:
        name, separator, path = value.partition("=")
        if not separator or not name or not path:
            raise typer.BadParameter(f"{value!r}: expected NAME=PATH, e.g. support-v1=/adapters/support-v1")
        if name in adapters:
            raise typer.BadParameter(f"{value!r}: adapter name {name!r} given twice; names are unique")
        adapters[name] = path
    return adapters


@app.command()
def serve(
    base_model: Annotated[
        str, typer.Option(help="fineplat-tiny, a local Hugging Face model directory, or a cached hub id.")
    ] = "fineplat-tiny",
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
    adapter: Annotated[
        list[str] | None, typer.Option(help="NAME=PATH of a LoRA adapter to load at startup; repeatable.")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="Most requests decoded in one batch.")] = 16,
    batch_window_ms: Annotated[
        float, typer.Option(help="How long the batcher waits for more requests.")
    ] = 5.0,
    dtype: Annotated[str, typer.Option(help="torch dtype of the base model weights.")] = "float32",
    device: Annotated[str, typer.Option(help="torch device: cpu or cuda.")] = "cpu",
    torch_threads: Annotated[
        int | None, typer.Option(help="CPU threads for torch (1 is fastest for tiny models on shared hosts).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info or debug.")] = "info",
) -> None:
    """Serve the base model and LoRA adapters with vLLM's endpoints until interrupted."""
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise typer.BadParameter(
            f"{log_level!r}: expected critical, error, warning, info or debug", param_hint="--log-level"
        )
    adapters = parse_adapters(adapter or [])
    from fineplat.serving.server import run_server  # torch and the model stack: only once options are valid

    try:
        run_server(
            base_model,
            host=host,
            port=port,
            adapters=adapters,
            dtype=dtype,
            device=device,
            max_batch_size=max_batch_size,
            batch_window_ms=batch_window_ms,
            torch_threads=torch_threads,
            log_level=log_level,  # type: ignore[arg-type]
        )
    except FineplatError as exc:
        typer.echo(f"fineplat serve: {exc}", err=True)
        raise typer.Exit(1) from exc
