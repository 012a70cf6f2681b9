"""LLaMo's loop guard, `AnswerLoopStopLogitsProcessor`: `LlamoForConditionalGeneration.generate` adds it when the
generation config sets `answer_loop_repeats`."""

import torch
from transformers.generation import LogitsProcessor


class AnswerLoopStopLogitsProcessor(LogitsProcessor):
    """Ends an answer that has fallen into a loop: once the answer ends with one of these, only end-of-sequence is
    allowed:

    - the same block of 1 to `max_period` tokens `repeats` times in a row (at least `min_tokens` tokens in all);
    - `repeats` copies of a block of `near_min_period` to `max_period` tokens, each copy differing from the one before
      in at most one token (a counter: "1,16-dihydroxy-1,17-dihydroxy-1,18-dihydroxy");
    - copies of a block of 2 to `near_min_period - 1` tokens, `counter_tokens` tokens in all, each copy differing from
      the one before in exactly one token (a count: ",21,22,23,24,25,26,27,28,29", "21Z,22Z,23Z,24Z,25Z,26Z,27Z");
    - two copies of a block of `long_periods` tokens (too long to repeat three times within an answer's limit);
    - one block of `frequent_block[0]` tokens seen `frequent_block[1]` times within the last `frequent_block[2]`
      tokens, the copies apart (a list whose items vary: "2,4-dihydroxy-2-oxo-2,4-dihydroxy-2-oxidanylidene-...");
    - at most `few_tokens[0]` distinct tokens among the last `few_tokens[1]` (a loop that beam search has steered
      around the rules above: "3-hydroxy-2-oxo-3-hydroxy-3-hydroxy-2-oxo-2-hydroxy-(2-oxo-...").

    A banned n-gram only moves a looping small model on to other degenerate text; ending the answer keeps what it said
    before the loop. Text that repeats a phrase with more changes in between is never stopped.
    """

    def __init__(
        self,
        repeats: int,
        eos_token_id: int | list[int],
        min_tokens: int = 12,
        max_period: int = 32,
        near_min_period: int = 6,
        long_periods: tuple[int, int] = (24, 48),
        frequent_block: tuple[int, int, int] = (4, 6, 64),
        counter_tokens: int = 30,
        few_tokens: tuple[int, int] = (14, 96),
    ):
        if not isinstance(repeats, int) or repeats < 2:
            raise ValueError(f"answer_loop_repeats must be an integer of at least 2, got {repeats!r}")
        self.repeats, self.min_tokens, self.max_period = repeats, min_tokens, max_period
        self.near_min_period, self.long_periods = near_min_period, long_periods
        self.frequent_block, self.counter_tokens, self.few_tokens = frequent_block, counter_tokens, few_tokens
        self.eos_token_id = torch.tensor(eos_token_id).flatten()
        self.prompt_length: int | None = None

    @staticmethod
    def _copies(answer: torch.LongTensor, copies: int, period: int) -> torch.LongTensor:
        """The last `copies * period` tokens of `answer` `(B, T)` as `(B, copies, period)`."""
        return answer[:, -copies * period :].view(answer.shape[0], copies, period)

    def looping(self, answer: torch.LongTensor) -> torch.BoolTensor:
        """`answer` `(B, T)` -> `(B,)`: whether each row ends in one of the loops above."""
        length = answer.shape[1]
        found = torch.zeros(answer.shape[0], dtype=torch.bool, device=answer.device)
        for period in range(1, max(self.max_period, self.long_periods[1]) + 1):
            copies = max(self.repeats, -(-self.min_tokens // period))
            if period <= self.max_period and copies * period <= length:
                tail = self._copies(answer, copies, period)
                found |= (tail == tail[:, -1:]).all(dim=2).all(dim=1)
            if self.near_min_period <= period <= self.max_period and self.repeats * period <= length:
                tail = self._copies(answer, self.repeats, period)
                found |= ((tail[:, 1:] != tail[:, :-1]).sum(dim=2) <= 1).all(dim=1)
            counts = -(-self.counter_tokens // period)
            if 2 <= period < self.near_min_period and counts * period <= length:
                tail = self._copies(answer, counts, period)
                changed = (tail[:, 1:] != tail[:, :-1]).sum(dim=2)
                found |= (changed == 1).all(dim=1)
            if self.long_periods[0] <= period <= self.long_periods[1] and 2 * period <= length:
                tail = self._copies(answer, 2, period)
                found |= (tail[:, 0] == tail[:, 1]).all(dim=1)
        return found | self._frequent(answer) | self._few_distinct(answer)

    def _few_distinct(self, answer: torch.LongTensor) -> torch.BoolTensor:
        """`answer` `(B, T)` -> `(B,)`: whether the last `window` tokens hold at most `most` distinct ones."""
        most, window = self.few_tokens
        if answer.shape[1] < window:
            return torch.zeros(answer.shape[0], dtype=torch.bool, device=answer.device)
        tail = answer[:, -window:].sort(dim=1).values
        return (tail[:, 1:] != tail[:, :-1]).sum(dim=1) + 1 <= most

    def _frequent(self, answer: torch.LongTensor) -> torch.BoolTensor:
        """`answer` `(B, T)` -> `(B,)`: whether a block of `n` tokens occurs `count` times in the last `window`."""
        size, count, window = self.frequent_block
        tail = answer[:, -window:]
        if tail.shape[1] < size * count:
            return torch.zeros(answer.shape[0], dtype=torch.bool, device=answer.device)
        blocks = tail.unfold(1, size, 1)  # (B, K, size)
        same = (blocks[:, :, None, :] == blocks[:, None, :, :]).all(dim=3)  # (B, K, K)
        return (same.sum(dim=2) >= count).any(dim=1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """`input_ids` `(B, L)` prompt + answer so far, `scores` `(B, vocab)`; looping rows may only end."""
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        looping = self.looping(input_ids[:, self.prompt_length :])
        if looping.any():
            eos = self.eos_token_id.to(scores.device)
            only_eos = torch.full_like(scores[0], -float("inf")).index_fill(0, eos, 0.0)
            scores = torch.where(looping[:, None], only_eos + scores.clamp_min(torch.finfo(scores.dtype).min), scores)
        return scores


__all__ = ["AnswerLoopStopLogitsProcessor"]
