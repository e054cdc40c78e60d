"""Run one training attempt without Dagster (scripts, debugging, the resume tests):

    python -m fineplat.training --config '{"method": "lora"}' --base-model DIR --data DIR \
        --checkpoints DIR --output DIR

Exit codes: 0 done, PREEMPTED_EXIT_CODE (75) after an emergency checkpoint on SIGTERM,
FAILED_EXIT_CODE (1) on a training error. Per-step losses are printed as JSON lines."""

from __future__ import annotations

from fineplat.training.preemption import PreemptionFlag

PREEMPTION = PreemptionFlag().install()  # first: a SIGTERM during the imports below is kept


def main() -> int:
    """Parse arguments, train, map the outcome to an exit code."""
    import argparse
    import json
    import os
    import sys
    from pathlib import Path

    from fineplat.errors import FineplatError
    from fineplat.training.config import TrainConfig
    from fineplat.training.constants import FAILED_EXIT_CODE, PREEMPTED_EXIT_CODE
    from fineplat.training.preemption import Preempted
    from fineplat.training.trainer import train

    parser = argparse.ArgumentParser(prog="python -m fineplat.training", description=__doc__)
    parser.add_argument("--config", default="{}", help="TrainConfig as JSON")
    parser.add_argument("--base-model", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--checkpoints", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args()

    def emit(record: dict) -> None:
        """One JSON line in a single write(2): under torchrun every rank shares this pipe, and a
        write of under PIPE_BUF bytes is never interleaved with another process's."""
        sys.stdout.flush()
        os.write(sys.stdout.fileno(), (json.dumps(record) + "\n").encode())

    class PrintSink:
        def log(self, step: int, metrics: dict[str, float]) -> None:
            emit({"step": step, **metrics})

        def status(self, status: str, step: int) -> None:
            emit({"status": status, "step": step})

    try:
        result = train(
            TrainConfig(**json.loads(args.config)),
            base_model_dir=args.base_model,
            data_dir=args.data,
            checkpoint_dir=args.checkpoints,
            output_dir=args.output,
            sink=PrintSink(),
            preemption=PREEMPTION,
        )
    except Preempted as exc:
        emit({"preempted": True, "step": exc.step, "checkpoint": exc.checkpoint})
        return PREEMPTED_EXIT_CODE
    except FineplatError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return FAILED_EXIT_CODE
    emit(
        {
            "done": True,
            "steps": result.steps,
            "final_loss": result.final_loss,
            "dtype": result.dtype,
            "attn_implementation": result.attn_implementation,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
