"""Where the CPU goes: CPU time per process group, read from ``/proc`` around the batches of a run.

On two cores every process of a benchmark shares the same CPU: the worker, the web server that takes
the POSTs, PostgreSQL, Redis. Throughput is then about two seconds of CPU a second divided by what
one unit costs across all of them, which a profile of one process cannot show. A group is either
the process tree under a pid (a Celery worker and its pool, gunicorn and its workers) or every
process of a command name (``postgres``, whose backends come and go with connections).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, str, float]]:
    """Every process now: pid -> (parent pid, command name, CPU seconds it has used)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone between the listing and the read
            continue
        # The command name is in parentheses and may hold spaces: the fields follow the last ")".
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / _TICKS_PER_S)
    return found


def _descendants(root: int, processes: Mapping[int, tuple[int, str, float]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _name, _cpu) in processes.items():
        children.setdefault(parent, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(trees: Mapping[str, int], names: Mapping[str, str]) -> dict[str, float]:
    """CPU seconds used so far by each group: ``trees`` maps a group to a root pid, ``names`` to a
    command name."""
    processes = _processes()
    used = {}
    for group, root in trees.items():
        used[group] = sum(processes[pid][2] for pid in _descendants(root, processes) if pid in processes)
    for group, name in names.items():
        used[group] = sum(cpu for _parent, command, cpu in processes.values() if command == name)
    return used


class CpuMeter:
    """Adds up each group's CPU over the batches measured with it, per unit of work."""

    def __init__(self, trees: Mapping[str, int], names: Mapping[str, str]) -> None:
        self._trees, self._names = dict(trees), dict(names)
        self._used: dict[str, float] = dict.fromkeys([*trees, *names], 0.0)
        self._units = 0

    @contextmanager
    def batch(self, units: int) -> Iterator[None]:
        before = cpu_seconds(self._trees, self._names)
        yield
        after = cpu_seconds(self._trees, self._names)
        for group in self._used:
            # A process that ended during the batch takes its CPU with it: never count below zero.
            self._used[group] += max(after[group] - before[group], 0.0)
        self._units += units

    def ms_per_unit(self) -> dict[str, float]:
        return {group: round(used * 1000 / max(self._units, 1), 1) for group, used in self._used.items()}
