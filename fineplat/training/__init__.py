"""Training: one readable loop for SFT, LoRA, QLoRA, DPO and continued pre-training, with exact
resume from atomic checkpoints and SIGTERM-safe preemption."""

from fineplat.training.config import TrainConfig
from fineplat.training.constants import FAILED_EXIT_CODE, PREEMPTED_EXIT_CODE

__all__ = ["FAILED_EXIT_CODE", "PREEMPTED_EXIT_CODE", "TrainConfig"]
