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


#: Path parameters, described once for every route that has them.
PATH_PARAMETERS = {
    "deployment_id": ("A deployment id", "dep_01jdq3v5y8m6c0d2rj6x1b7k9t"),
    "project_id": ("A project id of your organisation", "prj_01jdq3v5y8m6c0d2rj6x1b7k9t"),
    "webhook_id": ("A webhook id of the project", "whk_01jdq3v5y8m6c0d2rj6x1b7k9t"),
    "org_id": ("Your organisation's id", "org_01jdq3v5y8m6c0d2rj6x1b7k9t"),
    "name": ("A build variable's name (POSIX: letters, digits and _)", "API_BASE_URL"),
    "sha256": (
        "The file's SHA-256, 64 lower-case hexadecimal digits",
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    ),
    "site": (
        "A project id, or <projectId>@<deploymentId> for one deployment",
        "prj_01jdq3v5y8m6c0d2rj6x1b7k9t",
    ),
    "path": ("A file path of the site", "assets/app.js"),
}

#: The error code an example shows for each status (the real codes are in each answer's `error`).
EXAMPLE_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "ORG_MISMATCH",
    404: "NOT_FOUND",
    409: "DEPLOYMENT_IN_PROGRESS",
    413: "PAYLOAD_TOO_LARGE",
    422: "IDEMPOTENCY_KEY_REUSED",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


class Examples(BasePlugin):
    """Describes path parameters and gives every error answer an example of the one error shape."""

    def path_helper(
        self, path: str | None = None, operations: Any = None, parameters: Any = None, **kwargs: Any
    ) -> None:
        for parameter in parameters or []:
            if isinstance(parameter, dict) and parameter.get("in") == "path":
                description, example = PATH_PARAMETERS.get(parameter["name"], (None, None))
                if description is not None:
                    parameter.setdefault("description", description)
                    parameter.setdefault("example", example)

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        from web.auth import PUBLIC_BLUEPRINTS

        rule = kwargs.get("rule")
        blueprint = rule.endpoint.rpartition(".")[0] if rule is not None else ""
        for operation in (operations or {}).values():
            responses = operation.setdefault("responses", {})
            if blueprint in PUBLIC_BLUEPRINTS:
                operation.setdefault("security", [])
            elif 401 not in responses and "401" not in responses:
                responses[401] = {
                    "description": "Missing or invalid credentials",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            for status, response in responses.items():
                if not str(status).isdigit() or int(status) < 400 or not isinstance(response, dict):
                    continue
                content = response.get("content", {}).get("application/json")
                if content is None or "example" in content:
                    continue
                if content.get("schema") == {"$ref": "#/components/schemas/Error"}:
                    content["example"] = {
                        "success": False,
                        "error": EXAMPLE_CODES.get(int(status), "ERROR"),
                        "message": response.get("description", ""),
                        "timestamp": "2026-11-28T10:30:00Z",
                    }
