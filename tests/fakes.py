"""Fakes at the edge of the system, registered through the real adapter registry.

``FaultySandbox`` is the local sandbox with faults a test asks for, per project: creating the
sandbox fails with a retryable provider error (as a provider answering 503 would) a given number
of times, or until the test says the cause is fixed.

``GatedTarget`` is the local deploy target where a test holds a project's next publish or activate
at a gate until it lets it through (to act while the deploy step is at that point), or makes its
next activate fail with a retryable provider error, switching nothing.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from libra_deploy import registry
from libra_deploy.adapters.local_sandbox import LocalSandboxProvider
from libra_deploy.adapters.local_target import LocalStaticTarget
from libra_deploy.errors import ProviderError
from libra_deploy.ports import Manifest, ObjectStore, PublishResult, SandboxSpec

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


@dataclass
class Gate:
    """Where a held call waits: ``reached`` once it is there, until the test calls :meth:`open`."""

    reached: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)

    def open(self) -> None:
        self.opened.set()


class GatedTarget(LocalStaticTarget):
    name = "gated"

    #: (Not _lock: the local target's _lock is its per-project file lock.)
    _guard: ClassVar[threading.Lock] = threading.Lock()
    #: (project id, "publish" | "activate") -> the gate its next call waits at.
    _gates: ClassVar[dict[tuple[str, str], Gate]] = {}
    #: Project ids whose next activate fails.
    _failing: ClassVar[set[str]] = set()

    @classmethod
    def hold(cls, project_id: str, call: str) -> Gate:
        """Make the project's next ``call`` wait at a gate until the test opens it."""
        gate = Gate()
        with cls._guard:
            cls._gates[(project_id, call)] = gate
        return gate

    @classmethod
    def fail_next_activate(cls, project_id: str) -> None:
        with cls._guard:
            cls._failing.add(project_id)

    def _arrive(self, project_id: str, call: str) -> None:
        with self._guard:
            gate = self._gates.pop((project_id, call), None)
        if gate is not None:
            gate.reached.set()
            if not gate.opened.wait(60):
                raise TimeoutError(f"the test never opened the gate of {call}")

    def publish(
        self, project_id: str, deployment_id: str, manifest: Manifest, store: ObjectStore
    ) -> PublishResult:
        self._arrive(project_id, "publish")
        return super().publish(project_id, deployment_id, manifest, store)

    def activate(self, project_id: str, deployment_id: str) -> None:
        self._arrive(project_id, "activate")
        with self._guard:
            failing = project_id in self._failing
            self._failing.discard(project_id)
        if failing:
            raise ProviderError("deploy target answered 503 Service Unavailable", retryable=True)
        super().activate(project_id, deployment_id)


registry.register(registry.DEPLOY_TARGETS, GatedTarget.name, f"{__name__}:GatedTarget")
