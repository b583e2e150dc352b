"""How a project is built: which commands to run and where the output lands.

A project without a ``package.json``, or whose ``package.json`` has no ``build`` script, is a plain
static site: its files are its output. Otherwise the dependencies are installed (only when it
declares any) and ``npm run build`` runs; the output directory is ``libraDeploy.outputDir`` from
package.json when set, else the first of dist, build, out and public that the build produced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from libra_deploy.errors import BuildFailed

OUTPUT_CANDIDATES = ("dist", "build", "out", "public")
#: Package-manager subcommands that fetch dependencies: the only commands given the network.
_INSTALL_COMMANDS = frozenset(
    {
        ("npm", "install"),
        ("npm", "ci"),
        ("pnpm", "install"),
        ("yarn", "install"),
        ("bun", "install"),
    }
)


def needs_network(command: tuple[str, ...] | list[str]) -> bool:
    """Whether a build command installs dependencies (and so may reach the network)."""
    return tuple(command[:2]) in _INSTALL_COMMANDS


@dataclass(frozen=True)
class BuildPlan:
    #: (title, argv) pairs run in order in the sandbox's project directory.
    commands: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: Directories to look in for the output, in order; empty for a static site (the tree itself).
    output_dirs: tuple[str, ...] = ()
    framework: str = "static"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def is_static(self) -> bool:
        return not self.commands


def plan_build(package_json: bytes | None) -> BuildPlan:
    """Decide how to build from the project's package.json (None when it has none)."""
    if package_json is None:
        return BuildPlan()
    try:
        package = json.loads(package_json)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BuildFailed(f"package.json is not valid JSON: {exc}") from None
    if not isinstance(package, dict):
        raise BuildFailed("package.json must hold a JSON object")
    scripts = package.get("scripts") or {}
    if not isinstance(scripts, dict) or not scripts.get("build"):
        return BuildPlan()
    commands: list[tuple[str, tuple[str, ...]]] = []
    if package.get("dependencies") or package.get("devDependencies"):
        commands.append(("Installing dependencies", ("npm", "install", "--no-audit", "--no-fund")))
    commands.append(("Building", ("npm", "run", "build")))
    settings = package.get("libraDeploy") or {}
    explicit = settings.get("outputDir") if isinstance(settings, dict) else None
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit.strip("./") or ".." in explicit.split("/"):
            raise BuildFailed(
                f"libraDeploy.outputDir in package.json is not a directory of the project: {explicit!r}"
            )
        output_dirs: tuple[str, ...] = (explicit.strip("/").removeprefix("./"),)
    else:
        output_dirs = OUTPUT_CANDIDATES
    return BuildPlan(commands=tuple(commands), output_dirs=output_dirs, framework="node")
