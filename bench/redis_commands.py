"""What each side asks of Redis: commands per unit of work, from ``INFO commandstats`` around its batches.

The issue allows the pipeline no broker round trips beyond the bare chain's. Both sides share one
Redis (the stack's own), and their batches never overlap, so the difference of the server's
counters over a side's batches, divided by its units, is what that side asked for, the Celery
worker's and the web's requests together (the rate limiter keeps its counters there too).

Commands are not round trips: a MULTI ... EXEC block goes out in one write (kombu's delivery and
acknowledgement of a message, two commands inside each), and the commands a Lua script runs on the
server (the rate limiter's ``lindex``, ``lpush``, ``ltrim``, ``expire``, lower-cased in MONITOR)
are counted as commands too, though the client sent one EVALSHA. The idle worker of the other side
still polls its queue and publishes its heartbeat during a batch (about one command a second each:
under 0.1 per unit in these batches).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis


def _calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


class CommandMeter:
    """Adds up the commands Redis ran over the batches measured with it, per unit of work."""

    def __init__(self, client: redis.Redis, not_counted: frozenset[str] = frozenset()) -> None:
        """``not_counted``: the commands the benchmark itself sends while it waits for the units."""
        self._client = client
        self._not_counted = not_counted | {"info"}  # "info": the meter's own reads
        self._calls: dict[str, int] = {}
        self._units = 0

    @contextmanager
    def batch(self, units: int) -> Iterator[None]:
        before = _calls(self._client)
        yield
        after = _calls(self._client)
        for command, calls in after.items():
            if command not in self._not_counted:
                self._calls[command] = self._calls.get(command, 0) + calls - before.get(command, 0)
        self._units += units

    def per_unit(self) -> dict[str, object]:
        """{"total": commands per unit, "by_command": {command: per unit}}, the busiest first."""
        units = max(self._units, 1)
        by_command = {c: round(n / units, 2) for c, n in sorted(self._calls.items(), key=lambda kv: -kv[1])}
        return {
            "total": round(sum(self._calls.values()) / units, 1),
            "by_command": {c: n for c, n in by_command.items() if n >= 0.01},
        }
