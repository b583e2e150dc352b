"""The live-deployment pointer of a remote deploy target, remembered briefly by each process.

Not an adapter itself: the S3 and Cloudflare Pages targets keep a project's live deployment in a
remote object, and every request for a served site asks which deployment is live. Reading the object
each time would cost a round trip to the provider per request, so a process trusts what it read (or
what it activated itself) for :data:`TTL_S`: another process's promote is seen within that time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: How long a process trusts the pointer it read before reading it again.
TTL_S = 1.0


class LivePointers:
    def __init__(self, ttl_s: float = TTL_S) -> None:
        self._ttl_s = ttl_s
        self._seen: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def get(self, project_id: str, read: Callable[[], str | None]) -> str | None:
        """The project's live deployment: remembered if fresh, else ``read()`` from the target."""
        with self._lock:
            seen = self._seen.get(project_id)
        if seen is not None and time.monotonic() - seen[0] < self._ttl_s:
            return seen[1]
        live = read()
        self.remember(project_id, live)
        return live

    def remember(self, project_id: str, deployment_id: str | None) -> None:
        """What this process just wrote to (or read from) the target's pointer."""
        with self._lock:
            self._seen[project_id] = (time.monotonic(), deployment_id)
