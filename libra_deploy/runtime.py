"""The runtime: settings, database and adapters, built once per process and shared by its threads."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from libra_deploy import registry
from libra_deploy.config import Settings
from libra_deploy.db import make_engine, make_read_sessionmaker, make_sessionmaker
from libra_deploy.ports import DeployTarget, ObjectStore, SandboxProvider


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ObjectStore
    target: DeployTarget
    _sandboxes: dict[str, SandboxProvider] = field(default_factory=dict)
    #: Sessions for pure reads (see :func:`libra_deploy.db.make_read_sessionmaker`).
    read_sessions: sessionmaker[Session] = field(init=False)

    def __post_init__(self) -> None:
        self.read_sessions = make_read_sessionmaker(self.engine)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        engine = make_engine(settings.database_url)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            store=registry.object_store(settings),
            target=registry.deploy_target(settings),
        )

    def sandbox(self, name: str | None = None) -> SandboxProvider:
        """The sandbox provider by name (the settings' default when None), created on first use."""
        name = name or self.settings.sandbox_provider
        if name not in self._sandboxes:
            self._sandboxes[name] = registry.sandbox_provider(self.settings, name)
        return self._sandboxes[name]

    def close(self) -> None:
        self.engine.dispose()
