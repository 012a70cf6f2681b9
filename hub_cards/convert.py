"""The old import path of `llamo.convert_llamo_original_to_hf` (converts the original release): the same module."""

import sys

from llamo import convert_llamo_original_to_hf

sys.modules[__name__] = convert_llamo_original_to_hf
