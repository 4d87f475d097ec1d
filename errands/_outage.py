"""Riding out a store outage (DESIGN §6: a database restarted, a connection
dropped, a file locked). The loops that keep using the store - pollers,
timers, heartbeats, outcome reports - never give up on a StoreError: each
pauses a little longer after every failure (``Backoff``), and the parts of
one worker say so twice at most (``Outage``): when the store begins to fail,
and when it works again."""

from __future__ import annotations

import logging

RETRY_BACKOFF_S = (0.05, 1.0)
"""First and longest pause before trying a failed store call again: at most a
second, so that work goes on within about a second of the store's return."""


class Backoff:
    """Pauses that double from ``first_s`` up to ``longest_s``."""

    def __init__(
        self, first_s: float = RETRY_BACKOFF_S[0], longest_s: float = RETRY_BACKOFF_S[1]
    ) -> None:
        self._first_s = first_s
        self._longest_s = longest_s
        self._next_s = first_s

    def next(self) -> float:
        """The pause before the next try (longer each time)."""
        pause = self._next_s
        self._next_s = min(self._next_s * 2, self._longest_s)
        return pause

    def reset(self) -> None:
        """The call worked: the next failure pauses briefly again."""
        self._next_s = self._first_s


class Outage:
    """Whether the store fails for the parts of one worker (or client), so
    that they log an outage once as it begins and once as it ends, not once
    per failed call."""

    def __init__(self, logger: logging.Logger, who: str) -> None:
        self._logger = logger
        self._who = who
        self.down = False
        """Whether the last store call of any part failed."""

    def failed(self, what: str, error: BaseException) -> None:
        """A store call (``what``) failed; logs if that begins an outage."""
        if not self.down:
            self.down = True
            self._logger.warning(
                "%s: the store failed (%s: %s); retrying with backoff until it works",
                self._who,
                what,
                str(error).strip(),
            )

    def passed(self) -> None:
        """A store call worked; logs if that ends an outage."""
        if self.down:
            self.down = False
            self._logger.warning("%s: the store works again", self._who)
