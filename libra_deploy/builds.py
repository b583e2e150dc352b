"""How a project is built: its framework, its package manager, the commands, where the output lands.

A project without a ``package.json``, or whose ``package.json`` has no ``build`` script, is a plain
static site: its files are its output. Otherwise:

* the **framework** comes from the dependencies (and, where it decides the output, a config file):
  Next.js (static export only), Astro, SvelteKit (with adapter-static), Create React App, Vue CLI,
  Vite (with React, Vue or anything else); other projects with a build script are built as plain
  Node projects;
* the **package manager** comes from the lockfile: bun (``bun.lock``/``bun.lockb``), pnpm, yarn (1 or
  berry), npm; without a lockfile, the ``packageManager`` field, else npm. pnpm and yarn run through
  corepack, which ships with Node, so the sandbox needs nothing but Node;
* dependencies are installed only when the project declares any; with a lockfile the install is
  frozen to it, which is also what makes the dependency cache (keyed by the lockfile) sound;
* the **output directory** is ``libraDeploy.outputDir`` from package.json when set, else the
  framework's own, else the first of dist, build, out and public that the build produced.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from libra_deploy.errors import BuildFailed

OUTPUT_CANDIDATES = ("dist", "build", "out", "public")
NEXT_CONFIGS = ("next.config.js", "next.config.mjs", "next.config.cjs", "next.config.ts")
_NEXT_EXPORT = re.compile(r"""output\s*:\s*["']export["']""")


@dataclass(frozen=True)
class PackageManager:
    name: str
    #: The lockfile it was chosen by (a path of the project), None when there is none.
    lockfile: str | None
    install: tuple[str, ...]
    run: tuple[str, ...]


@dataclass(frozen=True)
class BuildPlan:
    framework: str = "static"
    #: How the framework shows in the log ("Vite (React)").
    title: str = "Static site"
    package_manager: PackageManager | None = None
    #: Whether dependencies must be installed before the build.
    install: bool = False
    #: Directories to look in for the output, in order; empty for a static site (the tree itself).
    output_dirs: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    @property
    def is_static(self) -> bool:
        return self.package_manager is None

    @property
    def build_command(self) -> tuple[str, ...]:
        """The project's build script, run by its package manager (``npm run build``...)."""
        if self.package_manager is None:
            raise ValueError("a static site has no build command")
        return (*self.package_manager.run, "build")


def _package_manager(package: dict[str, Any], paths: Collection[str]) -> PackageManager:
    declared = str(package.get("packageManager") or "")
    if "bun.lock" in paths or "bun.lockb" in paths:
        lockfile = "bun.lock" if "bun.lock" in paths else "bun.lockb"
        return PackageManager("bun", lockfile, ("bun", "install", "--frozen-lockfile"), ("bun", "run"))
    if "pnpm-lock.yaml" in paths:
        return PackageManager(
            "pnpm",
            "pnpm-lock.yaml",
            ("corepack", "pnpm", "install", "--frozen-lockfile"),
            ("corepack", "pnpm", "run"),
        )
    if "yarn.lock" in paths:
        berry = ".yarnrc.yml" in paths or re.match(r"yarn@[2-9]", declared) is not None
        frozen = "--immutable" if berry else "--frozen-lockfile"
        return PackageManager(
            "yarn", "yarn.lock", ("corepack", "yarn", "install", frozen), ("corepack", "yarn", "run")
        )
    for lockfile in ("package-lock.json", "npm-shrinkwrap.json"):
        if lockfile in paths:
            return PackageManager("npm", lockfile, ("npm", "ci", "--no-audit", "--no-fund"), ("npm", "run"))
    if declared.startswith("pnpm@"):
        return PackageManager("pnpm", None, ("corepack", "pnpm", "install"), ("corepack", "pnpm", "run"))
    if declared.startswith("yarn@"):
        return PackageManager("yarn", None, ("corepack", "yarn", "install"), ("corepack", "yarn", "run"))
    if declared.startswith("bun@"):
        return PackageManager("bun", None, ("bun", "install"), ("bun", "run"))
    return PackageManager("npm", None, ("npm", "install", "--no-audit", "--no-fund"), ("npm", "run"))


def _framework(
    deps: Collection[str], paths: Collection[str], read: Callable[[str], bytes]
) -> tuple[str, str, tuple[str, ...], dict[str, str]]:
    """(framework, title, its output directories, environment for its build)."""
    if "next" in deps:
        config = next((p for p in NEXT_CONFIGS if p in paths), None)
        if config is None or not _NEXT_EXPORT.search(read(config).decode("utf-8", "replace")):
            raise BuildFailed(
                "Next.js sites are deployed as static exports: set output: 'export' in next.config.js "
                "(a server-rendered Next.js app needs a server, which static hosting does not run)",
                code="UNSUPPORTED_FRAMEWORK",
            )
        return "nextjs", "Next.js (static export)", ("out",), {"NEXT_TELEMETRY_DISABLED": "1"}
    if "astro" in deps:
        return "astro", "Astro", ("dist",), {"ASTRO_TELEMETRY_DISABLED": "1"}
    if "@sveltejs/kit" in deps:
        if "@sveltejs/adapter-static" not in deps:
            raise BuildFailed(
                "SvelteKit sites are deployed as static sites: add @sveltejs/adapter-static and use it in "
                "svelte.config.js",
                code="UNSUPPORTED_FRAMEWORK",
            )
        return "sveltekit", "SvelteKit (static)", ("build",), {}
    if "react-scripts" in deps:
        return "react", "Create React App", ("build",), {}
    if "@vue/cli-service" in deps:
        return "vue", "Vue CLI", ("dist",), {}
    if "vite" in deps:
        if "vue" in deps:
            return "vue", "Vite (Vue)", ("dist",), {}
        if "react" in deps:
            return "vite", "Vite (React)", ("dist",), {}
        return "vite", "Vite", ("dist",), {}
    return "node", "Node project", (), {}


def plan_build(
    package_json: bytes | None, paths: Collection[str] = (), read: Callable[[str], bytes] | None = None
) -> BuildPlan:
    """Decide how to build from the project's package.json (None when it has none) and its file names.

    ``read`` returns the contents of one of ``paths``; it is called only for the few config files
    that decide the output (next.config.*).
    """
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
    deps: set[str] = set()
    for key in ("dependencies", "devDependencies"):
        if isinstance(package.get(key), dict):
            deps.update(package[key])

    def no_reader(path: str) -> bytes:
        raise BuildFailed(f"cannot read {path}")

    framework, title, framework_dirs, env = _framework(deps, paths, read or no_reader)
    settings = package.get("libraDeploy") or {}
    explicit = settings.get("outputDir") if isinstance(settings, dict) else None
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit.strip("./") or ".." in explicit.split("/"):
            raise BuildFailed(
                f"libraDeploy.outputDir in package.json is not a directory of the project: {explicit!r}"
            )
        output_dirs: tuple[str, ...] = (explicit.strip("/").removeprefix("./"),)
    else:
        output_dirs = (*framework_dirs, *(d for d in OUTPUT_CANDIDATES if d not in framework_dirs))
    return BuildPlan(
        framework=framework,
        title=title,
        package_manager=_package_manager(package, paths),
        install=bool(deps),
        output_dirs=output_dirs,
        env={"COREPACK_ENABLE_DOWNLOAD_PROMPT": "0", **env},
    )
