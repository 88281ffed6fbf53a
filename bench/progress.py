"""One way to show progress: a bar from the run's ``progress`` factory (tqdm-like), or a silent stand-in."""
from __future__ import annotations

from typing import Any, Callable


class _Silent:
    """What :func:`progress_bar` returns when progress is off: accepts the calls, shows nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_bar(progress: Callable[..., Any] | None, **kwargs: Any):
    """``progress(**kwargs)`` (e.g. ``total``, ``desc``, ``unit``) or a silent bar when ``progress`` is None;
    use it as a context manager so the bar is closed on every exit."""
    return progress(**kwargs) if progress else _Silent()
