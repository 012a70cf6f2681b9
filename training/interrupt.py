"""Graceful interruption: on SIGTERM or SIGINT (Ctrl-C) a training stage finishes its current optimizer step, saves a
checkpoint and exits, so that rerunning the same command resumes without losing that step. A second signal stops at
once (the default behaviour).

transformers has its own stop-and-save on SIGTERM (`TrainingArguments.enable_jit_checkpoint`,
`transformers.trainer_jit_checkpoint`). It is not used, because it cannot keep these guarantees:

- it handles SIGTERM only, not Ctrl-C (SIGINT);
- it saves at the first Trainer hook after its 3-second timer, most often `on_pre_optimizer_step` (after a step's
  backward pass, before its update): a run resumed from that checkpoint replays the step with another random state
  (other dropout masks), so it does not end with the weights of an uninterrupted run;
- each process decides alone: in a distributed run the processes that see the signal (or see it earlier) start a
  save whose collective operations (the FLOPs count, FSDP / DeepSpeed state gathering) the others never join.
  `GracefulInterrupt` agrees across processes at every step end;
- after it stops, `trainer.train()` returns as if the run had finished, and a caller would save the final model.

`check_arguments` refuses `enable_jit_checkpoint` for this reason rather than letting two handlers compete."""

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
