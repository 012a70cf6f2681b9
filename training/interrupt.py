"""Graceful interruption: on SIGTERM or SIGINT (Ctrl-C) a training stage finishes its current optimizer step, saves a
checkpoint and exits, so that rerunning the same command resumes without losing that step. A second signal stops at
once (the default behaviour).

transformers' own stop-and-save (`TrainingArguments.enable_jit_checkpoint`) is refused by `check_arguments`: it
handles SIGTERM only; it mostly saves between a step's backward pass and its update, so a resumed run replays the
step with another random state; each process decides alone, so in a distributed run the others never join the save's
collective operations (`GracefulInterrupt` agrees across processes at every step end); and `trainer.train()` then
returns as if the run had finished."""

from __future__ import annotations

import signal
import threading

from accelerate.utils import gather_object
from transformers import TrainerCallback

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulInterrupt(TrainerCallback):
    """A `TrainerCallback` that turns SIGTERM / SIGINT into "save a checkpoint at the end of this step, then stop".
    Use it as a context manager around `trainer.train()` (it installs its signal handlers there, in the main thread
    only), then call `exit_if_interrupted`."""

    def __init__(self, log=print):
        self.log = log
        self.signal_number: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signal_number: int, frame) -> None:
        if self.signal_number is not None:  # a second signal: stop at once, as without this callback
            signal.signal(signal_number, self._previous.get(signal_number, signal.SIG_DFL))
            signal.raise_signal(signal_number)
            return
        self.signal_number = signal_number
        self.log(
            f"[train] {signal.Signals(signal_number).name} received: finishing this step, saving a checkpoint, then "
            "stopping (send it again to stop at once)"
        )

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for number in HANDLED_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def on_step_end(self, args, state, control, **kwargs):
        if any(gather_object([self.signal_number is not None])):  # on any process: every rank saves and stops
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def exit_if_interrupted(self, state) -> None:
        """After `trainer.train()`: exit (status 128 + signal number) when the run stopped early on a signal, so that
        neither the final model nor the run summary is written and the same command resumes from the checkpoint."""
        if self.stopped_at is None or state.global_step >= state.max_steps:
            return
        self.log(
            f"[train] stopped at step {state.global_step} with checkpoint-{state.global_step} saved; rerun the same "
            "command to resume"
        )
        raise SystemExit(128 + (self.signal_number or signal.SIGTERM))
