"""ID-Direct (P5-style): the LLM reads the user's raw item IDs as text."""
from __future__ import annotations

from typing import Sequence

from bench.contract import SplitView
from bench.registry import register
from paradigms._text import TextTwoTower


@register("id-direct")
class IDDirect(TextTwoTower):
    """Prompt ``User 15 has interacted with 115, 301, ...`` (most recent first); item text ``item 115``."""

    version = "1"
    description = "ID-Direct (P5-style): raw item IDs as text, frozen LLM features, trained linear towers."
    separator = ", "

    def history_piece(self, split: SplitView, item: int) -> str:
        return str(split.item_ids[item])

    def render(self, user_id: str, pieces: Sequence[str]) -> str:
        return f"User {user_id} has interacted with {self.separator.join(pieces)}"

    def item_text(self, split: SplitView, item: int) -> str:
        return f"item {split.item_ids[item]}"
