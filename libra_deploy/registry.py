"""Adapter names, as written in the settings, mapped to the classes that implement each port.

Classes are named by dotted path and imported only when chosen, so an optional SDK (e2b, daytona,
boto3) is needed only by the deployments that use it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from libra_deploy.errors import ConfigError

if TYPE_CHECKING:
    from libra_deploy.config import Settings
    from libra_deploy.ports import DeployTarget, ObjectStore, SandboxProvider

SANDBOX_PROVIDERS = {
    "local": "libra_deploy.adapters.local_sandbox:LocalSandboxProvider",
    "e2b": "libra_deploy.adapters.e2b_sandbox:E2BSandboxProvider",
    "daytona": "libra_deploy.adapters.daytona_sandbox:DaytonaSandboxProvider",
}
DEPLOY_TARGETS = {
    "local": "libra_deploy.adapters.local_target:LocalStaticTarget",
    "s3": "libra_deploy.adapters.s3_target:S3Target",
    "cloudflare-pages": "libra_deploy.adapters.cloudflare_pages:CloudflarePagesTarget",
}
OBJECT_STORES = {
    "local": "libra_deploy.adapters.local_store:LocalObjectStore",
    "s3": "libra_deploy.adapters.s3_store:S3ObjectStore",
}


def register(table: dict[str, str], name: str, dotted: str) -> None:
    """Add an adapter under ``name`` (a plugin, or a test's fake at the edge of the system)."""
    table[name] = dotted


def _load(table: dict[str, str], setting: str, name: str, settings: Settings) -> Any:
    module_name, _, class_name = table[name].partition(":")
    try:
        module = import_module(module_name)
    except ImportError as exc:
        raise ConfigError(setting, f"needs a package that is not installed ({exc.name})", name) from None
    return getattr(module, class_name).from_settings(settings)


def sandbox_provider(settings: Settings, name: str | None = None) -> SandboxProvider:
    return _load(
        SANDBOX_PROVIDERS, "SANDBOX_BUILDER_DEFAULT_PROVIDER", name or settings.sandbox_provider, settings
    )


def deploy_target(settings: Settings) -> DeployTarget:
    return _load(DEPLOY_TARGETS, "DEPLOY_TARGET", settings.deploy_target, settings)


def object_store(settings: Settings) -> ObjectStore:
    return _load(OBJECT_STORES, "OBJECT_STORE", settings.object_store, settings)
