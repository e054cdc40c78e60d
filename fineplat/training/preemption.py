"""Spot preemption: SIGTERM becomes a flag the training loop checks after each optimizer step, so the
current step completes, an emergency checkpoint is written and the process exits with
PREEMPTED_EXIT_CODE, which the launcher turns into a Dagster retry that resumes exactly."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class PreemptionFlag:
    """Set by SIGTERM (and SIGINT when asked); install it before loading the model so a notice that
    arrives during setup is not lost."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def install(self, *, include_sigint: bool = False) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)
            if include_sigint:
                signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    def set(self) -> None:
        """Request a preemption programmatically (tests, pod watchers)."""
        self.signal_name = self.signal_name or "manual"
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


class Preempted(Exception):
    """Raised by the loop after the emergency checkpoint; the entry point exits with PREEMPTED_EXIT_CODE."""

    def __init__(self, step: int, checkpoint: str) -> None:
        super().__init__(f"preempted after step {step}; emergency checkpoint at {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint
