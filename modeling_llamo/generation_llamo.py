"""LLaMo's loop guard, `AnswerLoopStopLogitsProcessor`: `LlamoForConditionalGeneration.generate` adds it when the
generation config sets `answer_loop_repeats` (and gives it `answer_sentence_end_token_ids` when set); and
`answer_log_likelihoods`, the score by which the pipeline compares its answer with the in-context neighbours' own."""

from collections.abc import Mapping, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers.generation import LogitsProcessor

LOOP_GUARD_KEYS = ("answer_loop_repeats", "answer_sentence_end_token_ids")
SENTENCE_PREFIX_TOKENS = 10


def repeats_sentence_start(answer: torch.LongTensor, sentence_ends: torch.LongTensor, n: int) -> torch.BoolTensor:
    """`answer` `(B, T)` -> `(B,)`: whether the sentence under way has just reached `n` tokens, the first `n` of an
    earlier sentence (sentences end at a token of `sentence_ends`; none given: never)."""
    length = answer.shape[1]
    if not len(sentence_ends) or length < 2 * n + 1:
        return torch.zeros(answer.shape[0], dtype=torch.bool, device=answer.device)
    ends = torch.isin(answer, sentence_ends.to(answer.device))  # (B, T)
    # the sentence under way starts right after an end at T - n - 1 and holds no end before its last token
    under_way = ends[:, -n - 1] & ~ends[:, -n:-1].any(dim=1)
    starts = torch.cat([torch.ones_like(ends[:, :1]), ends[:, : length - 2 * n]], dim=1)  # (B, T - 2n + 1)
    earlier = answer[:, : length - n].unfold(1, n, 1)  # (B, T - 2n + 1, n): every window before the current
    same = (earlier == answer[:, None, -n:]).all(dim=2) & starts
    return under_way & same.any(dim=1)


def drop_repeated_sentence_start(
    answer: list[int], eos_token_id: int | list[int], sentence_ends: list[int], n: int = SENTENCE_PREFIX_TOKENS
) -> list[int]:
    """The token ids of one generated answer without the repeated sentence start that made the loop guard end it (the
    `n` tokens before the first end-of-sequence), else unchanged."""
    eos = set(torch.tensor(eos_token_id).flatten().tolist())
    end = next((i for i, token in enumerate(answer) if token in eos), None)
    if end is None or not repeats_sentence_start(torch.tensor([answer[:end]]), torch.tensor(sentence_ends), n).item():
        return answer
    return answer[: end - n] + answer[end:]


@torch.no_grad()
def answer_log_likelihoods(
    model, prompt: Mapping[str, torch.Tensor], answers: Sequence[Sequence[int]], pad_token_id: int
) -> list[float]:
    """The mean log-probability per token of each answer after one prompt: beam search's score of a finished beam at
    `length_penalty=1`. `prompt`: the processor's inputs for that prompt (batch of 1, no padding, its graph inputs),
    read once: its cache is repeated for the answers; `answers`: lists of token ids, each ending with its
    end-of-sequence token."""
    first = model(**prompt, use_cache=True, logits_to_keep=1)  # the last prompt position predicts each first token
    cache = first.cache
    cache.batch_repeat_interleave(len(answers))
    tail = pad_sequence([torch.tensor(a) for a in answers], batch_first=True, padding_value=pad_token_id)
    tail = tail.to(prompt["input_ids"].device)
    tail_mask = pad_sequence([torch.ones(len(a), dtype=torch.long) for a in answers], batch_first=True).to(tail.device)
    mask = torch.cat([prompt["attention_mask"].expand(len(answers), -1), tail_mask], 1)
    rest = model(input_ids=tail, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=tail.shape[1]).logits
    logits = torch.cat([first.logits.expand(len(answers), -1, -1), rest[:, :-1]], 1).float()  # (N, T, vocab)
    chosen = logits.log_softmax(-1).gather(-1, tail[..., None]).squeeze(-1) * tail_mask
    return (chosen.sum(1) / tail_mask.sum(1)).tolist()


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
      around the rules above: "3-hydroxy-2-oxo-3-hydroxy-3-hydroxy-2-oxo-2-hydroxy-(2-oxo-...");
    - per `(size, count)` of `long_blocks`, one block of `size` tokens seen `count` times in the answer (a long name
      said again and again, or a fragment a made-up name keeps coming back to);
    - with `sentence_end_token_ids`, a sentence whose first `sentence_prefix_tokens` tokens are those of an earlier
      sentence ("It is a conjugate base of X. It is a conjugate acid of X. It is a conjugate base of X").

    Ending the answer keeps what it said before the loop (a banned n-gram would only move on to other degenerate text).
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
        long_blocks: tuple[tuple[int, int], ...] = ((16, 4), (6, 8)),
        sentence_end_token_ids: list[int] | None = None,
        sentence_prefix_tokens: int = SENTENCE_PREFIX_TOKENS,
    ):
        if not isinstance(repeats, int) or repeats < 2:
            raise ValueError(f"answer_loop_repeats must be an integer of at least 2, got {repeats!r}")
        self.repeats, self.min_tokens, self.max_period = repeats, min_tokens, max_period
        self.near_min_period, self.long_periods = near_min_period, long_periods
        self.frequent_block, self.counter_tokens, self.few_tokens = frequent_block, counter_tokens, few_tokens
        self.long_blocks = long_blocks
        self.eos_token_id = torch.tensor(eos_token_id).flatten()
        self.sentence_ends = torch.tensor(sentence_end_token_ids or [], dtype=torch.long)
        self.sentence_prefix_tokens = sentence_prefix_tokens
        self.prompt_length: int | None = None
        # the block rules: per rule, its test of the changes from one copy to the next, its periods `(P,)` and the
        # copies it needs of each `(P,)`
        self.rules: list[tuple[str, torch.LongTensor, torch.LongTensor]] = []
        top = max(max_period, long_periods[1])
        for test, periods, copies in (
            ("same", range(1, max_period + 1), lambda p: max(repeats, -(-min_tokens // p))),
            ("at most one change", range(near_min_period, max_period + 1), lambda p: repeats),
            ("one change", range(2, near_min_period), lambda p: -(-counter_tokens // p)),
            ("same", range(long_periods[0], long_periods[1] + 1), lambda p: 2),
        ):
            periods = [p for p in periods if p <= top]
            if periods:
                self.rules.append((test, torch.tensor(periods), torch.tensor([copies(p) for p in periods])))

    def looping(self, answer: torch.LongTensor) -> torch.BoolTensor:
        """`answer` `(B, T)` -> `(B,)`: whether each row ends in one of the loops above."""
        length, device = answer.shape[1], answer.device
        checks = []  # per rule that fits: its test, periods (P,) and copy boundaries counted back from the end (P, C)
        for test, periods, copies in self.rules:
            fits = periods * copies <= length
            if fits.any():
                periods, copies = periods[fits], copies[fits]
                # 0, p, 2p, ... up to the oldest copy compared, repeated where a period needs fewer copies
                bounds = torch.minimum(torch.arange(int(copies.max())), copies[:, None] - 1) * periods[:, None]
                checks.append((test, periods.to(device), bounds.to(device)))
        found = repeats_sentence_start(answer, self.sentence_ends, self.sentence_prefix_tokens)
        found |= self._block_seen_again(answer, *self.frequent_block)
        most, window = self.few_tokens
        if length >= window:  # at most `most` distinct tokens among the last `window`
            tail = answer[:, -window:].sort(dim=1).values
            found |= (tail[:, 1:] != tail[:, :-1]).sum(dim=1) + 1 <= most
        for size, count in self.long_blocks:
            found |= self._block_seen_again(answer, size, count, None)
        if not checks:
            return found
        top = max(int(periods.max()) for _, periods, _ in checks)
        window = max(int(bounds.max()) for _, _, bounds in checks)
        # changed[b, p - 1, r]: whether the token r places before the end differs from the one p places before that
        ends = length - 1 - torch.arange(window, device=device)
        lags = torch.arange(1, top + 1, device=device)
        before = (ends[None, :] - lags[:, None]).clamp_min(0)  # every pair compared lies in the answer (fits)
        changed = answer[:, ends][:, None, :] != answer[:, before]  # (B, top, window)
        counted = torch.nn.functional.pad(changed.cumsum(dim=2), (1, 0))  # [..., k]: changes among the last k
        for test, periods, bounds in checks:
            lag = periods[:, None] - 1
            per_copy = counted[:, lag, bounds[:, 1:]] - counted[:, lag, bounds[:, :-1]]  # (B, P, C - 1)
            if test == "same":
                fired = per_copy == 0
            elif test == "at most one change":
                fired = per_copy <= 1
            else:  # exactly one change; a repeated boundary makes an empty copy, which passes
                fired = (per_copy == 1) | (bounds[:, 1:] == bounds[:, :-1])
            found |= fired.all(dim=2).any(dim=1)
        return found

    @staticmethod
    def _block_seen_again(answer: torch.LongTensor, size: int, count: int, window: int | None) -> torch.BoolTensor:
        """`answer` `(B, T)` -> `(B,)`: whether its last `size` tokens are a block seen `count` times within its last
        `window` tokens (None: the whole answer). Checking the newest block is enough: another block's count cannot
        grow, so the rule fires first exactly as the newest block reaches `count`."""
        tail = answer if window is None else answer[:, -window:]
        if tail.shape[1] < size * count:
            return torch.zeros(answer.shape[0], dtype=torch.bool, device=answer.device)
        blocks = tail.unfold(1, size, 1)  # (B, K, size)
        return (blocks == blocks[:, -1:]).all(dim=2).sum(dim=1) >= count

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


__all__ = ["LOOP_GUARD_KEYS", "AnswerLoopStopLogitsProcessor", "answer_log_likelihoods", "drop_repeated_sentence_start"]
