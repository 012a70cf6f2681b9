"""Keep stderr for what the user asked for: no weight-loading progress bars, no library-internal deprecations."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LIBRARY_DEPRECATIONS = (r"`is_gradient_checkpointing` is deprecated",)
"""FutureWarnings raised inside libraries we call, not by our code, that a user cannot act on (PEFT's `PeftModel`
reads transformers' deprecated `is_gradient_checkpointing` alias)."""


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Load or save models without transformers' progress bars ("Loading weights", "Writing model shards") and without
    the `LIBRARY_DEPRECATIONS` warnings; the progress-bar setting is restored afterwards and every other warning
    still shows."""
    from transformers.utils import logging as transformers_logging

    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            for message in LIBRARY_DEPRECATIONS:
                warnings.filterwarnings("ignore", message=message, category=FutureWarning)
            yield
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()
