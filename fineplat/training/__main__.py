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

    class PrintSink:
        def log(self, step: int, metrics: dict[str, float]) -> None:
            print(json.dumps({"step": step, **metrics}), flush=True)

        def status(self, status: str, step: int) -> None:
            print(json.dumps({"status": status, "step": step}), flush=True)

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
        print(json.dumps({"preempted": True, "step": exc.step, "checkpoint": exc.checkpoint}), flush=True)
        return PREEMPTED_EXIT_CODE
    except FineplatError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return FAILED_EXIT_CODE
    print(json.dumps({"done": True, "steps": result.steps, "final_loss": result.final_loss}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
