"""Exit codes shared by the trainer process and the launchers that interpret them."""

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: preempted, resume from checkpoint
FAILED_EXIT_CODE = 1
RUN_SUMMARY = "fineplat_run.json"  # written by the trainer beside its output: what the run measured
