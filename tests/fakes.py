"""Fakes at the edge of the system, registered through the real adapter registry.

``FaultySandbox`` is the local sandbox with faults a test asks for, per project: creating the
sandbox fails with a retryable provider error (as a provider answering 503 would) a given number
of times, or until the test says the cause is fixed.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import ClassVar

from libra_deploy import registry
from libra_deploy.adapters.local_sandbox import LocalSandboxProvider
from libra_deploy.errors import ProviderError
from libra_deploy.ports import SandboxSpec

FOREVER = -1


class FaultySandbox(LocalSandboxProvider):
    name = "faulty"

    _lock: ClassVar[threading.Lock] = threading.Lock()
    #: project id -> failures still to inject (FOREVER: until healed).
    _faults: ClassVar[dict[str, int]] = {}
    #: project id -> create calls seen.
    calls: ClassVar[Counter[str]] = Counter()

    @classmethod
    def fail(cls, project_id: str, times: int = FOREVER) -> None:
        with cls._lock:
            cls._faults[project_id] = times

    @classmethod
    def heal(cls, project_id: str) -> None:
        with cls._lock:
            cls._faults.pop(project_id, None)

    def create(self, spec: SandboxSpec) -> str:
        with self._lock:
            self.calls[spec.project_id] += 1
            left = self._faults.get(spec.project_id, 0)
            if left:
                if left > 0:
                    self._faults[spec.project_id] = left - 1
                raise ProviderError("sandbox provider answered 503 Service Unavailable", retryable=True)
        return super().create(spec)


registry.register(registry.SANDBOX_PROVIDERS, FaultySandbox.name, f"{__name__}:FaultySandbox")
