"""Stage-1 (graph-language alignment) and stage-2 (instruction tuning) training for LLaMo."""
