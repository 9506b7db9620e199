"""Streams in progress, so that a shutdown can end those still running after the grace."""

from __future__ import annotations

import aiohttp


class StreamRegistry:
    def __init__(self) -> None:
        self.active: set[aiohttp.ClientResponse] = set()
        self.cut_off = False

    def cut_all(self) -> None:
        """Close every upstream stream; each relay then ends its client's stream with an error event."""
        self.cut_off = True
        for response in list(self.active):
            response.close()
