"""Token accounting: fit a history into a prompt under a token budget, counted with the real tokenizer.

A prompt keeps the *most recent* history items that fit; ``fit_prompt`` finds the largest such count by
bisection over the rendered text, so the returned prompt never exceeds the budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from bench.registry import TokenUsage


@dataclass(frozen=True)
class FittedPrompt:
    """A rendered prompt, how many history items it carries, and its length in tokens."""

    text: str
    kept: int
    tokens: int


def fit_prompt(render: Callable[[Sequence[str]], str], pieces_recent_first: Sequence[str],
               count_tokens: Callable[[str], int], budget: int) -> FittedPrompt:
    """The prompt with the largest number k of leading (most recent) pieces whose token count is <= budget.

    ``render(pieces)`` builds the prompt text from the kept pieces, most recent first. If not even the empty
    history fits, the result carries 0 items (and may exceed the budget only by the fixed template).
    """
    def length(k: int) -> int:
        return count_tokens(render(pieces_recent_first[:k]))

    full = length(len(pieces_recent_first))
    if full <= budget:
        return FittedPrompt(render(pieces_recent_first), len(pieces_recent_first), full)
    low, high = 0, len(pieces_recent_first)  # invariant: length(low) <= budget < length(high) (or low == 0)
    while high - low > 1:
        mid = (low + high) // 2
        if length(mid) <= budget:
            low = mid
        else:
            high = mid
    text = render(pieces_recent_first[:low])
    return FittedPrompt(text, low, count_tokens(text))


def usage(user: int, prompt: FittedPrompt, history_len: int, soft_tokens: int = 0) -> TokenUsage:
    """The :class:`TokenUsage` row of one user's prompt."""
    return TokenUsage(user=user, hard_tokens=prompt.tokens, soft_tokens=soft_tokens, history_len=history_len,
                      history_kept=prompt.kept)
