"""What /openapi.json needs beyond flask-smorest's defaults to generate a client from it."""

from __future__ import annotations

import re
from typing import Any

from apispec import BasePlugin


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class OperationIds(BasePlugin):
    """Gives every operation a stable operationId, ``<method>_<view>`` (``post_deploy``, ``get_logs``).

    Client generators name their functions after it; without one each invents its own.
    """

    def __init__(self) -> None:
        super().__init__()
        self._taken: set[str] = set()

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        rule = kwargs.get("rule")
        if rule is None or not operations:
            return
        blueprint, _, view = rule.endpoint.rpartition(".")
        for method, operation in operations.items():
            if "operationId" in operation:
                continue
            candidate = f"{method}_{_snake(view)}"
            if candidate in self._taken:
                candidate = f"{method}_{blueprint}_{_snake(view)}"
            self._taken.add(candidate)
            operation["operationId"] = candidate
