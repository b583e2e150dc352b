"""The process's runtime (settings, database, adapters), built on first use from the environment.

``libra-deploy up`` installs its own runtime with :func:`set_runtime` so that the API and the
worker threads of the embedded default share one.
"""

from __future__ import annotations

import threading

from libra_deploy.config import Settings
from libra_deploy.runtime import Runtime

_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime.from_settings(Settings.from_env())
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    global _runtime
    with _lock:
        _runtime = runtime


def reset_runtime() -> None:
    set_runtime(None)
