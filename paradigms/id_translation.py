"""ID-Translation: the LLM reads the titles of the user's items; long histories hit the token budget."""
from __future__ import annotations

from typing import Sequence

from bench.contract import SplitView
from bench.errors import ParadigmUnavailable
from bench.registry import register
from paradigms._text import TextTwoTower


@register("id-translation")
class IDTranslation(TextTwoTower):
    """Prompt ``The user bought: Toy Story; GoldenEye; ...`` (most recent first); item text = its title."""

    version = "1"
    description = "ID-Translation: item titles as text, frozen LLM features, trained linear towers."
    separator = "; "

    def check(self, split: SplitView) -> None:
        if not split.has_titles:
            raise ParadigmUnavailable(f"dataset '{split.dataset}' has no item titles (no .item file with a title "
                                      "column), which id-translation needs")

    def history_piece(self, split: SplitView, item: int) -> str:
        return split.title(item)

    def render(self, user_id: str, pieces: Sequence[str]) -> str:
        return f"The user bought: {self.separator.join(pieces)}"

    def item_text(self, split: SplitView, item: int) -> str:
        return split.title(item)
