"""Fit a training run into a wall-clock budget: a leased GPU, a notebook session with a time limit."""

from __future__ import annotations

import time
from functools import partial

from transformers import TrainerCallback


class TimeBudgetCallback(TrainerCallback):
    """Ends training within `seconds` of the start of `train()`, the learning-rate schedule ending there too.

    Optimizer steps `skip + 1` to `skip + probe` are timed (the first `skip` pay for warm-up work); from their mean
    `state.max_steps` is lowered (never raised) to fit the time left, and the scheduler gets the new total. With the
    probe inside the warm-up, the run is the one a recipe with the fitted `max_steps` would make. The default probe of
    50 steps is one megabatch of the length-grouped sampler (whose first batches hold its longest rows). `fitted_steps`
    and `step_seconds` hold what was chosen (None before the probe ends)."""

    def __init__(self, seconds: float, probe: int = 50, skip: int = 10):
        if seconds <= 0 or probe < 1 or skip < 0:
            raise ValueError(f"need seconds > 0, probe >= 1 and skip >= 0, got {seconds}, {probe}, {skip}")
        self.seconds, self.probe, self.skip = seconds, probe, skip
        self.started = self.probe_started = None
        self.fitted_steps: int | None = None
        self.step_seconds: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.monotonic(), state.global_step
        if self.skip == 0:  # no step to skip: the probe starts now
            self.probe_started = self.started

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        done = state.global_step - self.first_step
        if done == self.skip:
            self.probe_started = time.monotonic()
        elif done == self.skip + self.probe and self.fitted_steps is None:
            now = time.monotonic()
            self.step_seconds = (now - self.probe_started) / self.probe
            left = int((self.seconds - (now - self.started)) / self.step_seconds)
            self.fitted_steps = max(state.global_step + 1, min(state.max_steps, state.global_step + left))
            state.max_steps = self.fitted_steps
            set_total_steps(lr_scheduler, self.fitted_steps)
        return control


def set_total_steps(scheduler, total: int) -> bool:
    """Give a `LambdaLR` built by transformers' schedule functions (whose step functions are partials with a
    `num_training_steps` keyword) a new total; returns whether one was changed. Accelerate's wrapper is unwrapped."""
    lambdas = getattr(getattr(scheduler, "scheduler", scheduler), "lr_lambdas", [])
    found = [i for i, f in enumerate(lambdas) if isinstance(f, partial) and "num_training_steps" in f.keywords]
    for index in found:
        lambdas[index] = partial(lambdas[index], num_training_steps=total)  # partial flattens partials
    return bool(found)
