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

A project's own build settings (:class:`BuildSettings`, set with ``PATCH /projects/<id>``) win over
all of that: an install or build command replaces the detected one (and a build command makes a
project without package.json a built one), an output directory replaces the detected ones. The root
directory is applied by the caller, which plans from the files under it.
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
class BuildSettings:
    """A project's explicit build settings; None leaves the decision to the detection."""

    install_command: str | None = None
    build_command: str | None = None
    output_directory: str | None = None
    node_version: str | None = None


def shell(command: str) -> tuple[str, ...]:
    """A command as users type it into a host's settings, run by the sandbox's shell."""
    return ("sh", "-c", command)


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
    #: The project's own commands (one line of shell each), replacing the detected ones.
    custom_install: str | None = None
    custom_build: str | None = None
    #: For a static site: the folder of the source that is the site ("" for all of it).
    static_dir: str = ""

    @property
    def is_static(self) -> bool:
        return self.package_manager is None and self.custom_build is None

    @property
    def build_command(self) -> tuple[str, ...]:
        """The project's build command, or its build script run by its package manager (``npm run build``)."""
        if self.custom_build is not None:
            return shell(self.custom_build)
        if self.package_manager is None:
            raise ValueError("a static site has no build command")
        return (*self.package_manager.run, "build")

    @property
    def install_command(self) -> tuple[str, ...] | None:
        """What installs the dependencies, or None when nothing is to be installed."""
        if self.custom_install is not None:
            return shell(self.custom_install)
        if self.install and self.package_manager is not None:
            return self.package_manager.install
        return None


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
    package_json: bytes | None,
    paths: Collection[str] = (),
    read: Callable[[str], bytes] | None = None,
    settings: BuildSettings | None = None,
) -> BuildPlan:
    """Decide how to build from the project's package.json (None when it has none), its file names
    and its own build settings, which win over what is detected.

    ``read`` returns the contents of one of ``paths``; it is called only for the few config files
    that decide the output (next.config.*).
    """
    settings = settings or BuildSettings()
    package = _package(package_json)
    scripts = package.get("scripts") if package is not None else None
    has_script = isinstance(scripts, dict) and bool(scripts.get("build"))
    if not (has_script or settings.build_command):
        # Nothing to build: the files (or those of the output directory) are the site.
        return BuildPlan(static_dir=settings.output_directory or "")
    if package is None:
        # A build command without package.json (a shell script, a static site generator...).
        return BuildPlan(
            framework="custom",
            title="The project's build command",
            output_dirs=_output_dirs({}, (), settings),
            env={"NODE_VERSION": settings.node_version} if settings.node_version else {},
            custom_install=settings.install_command,
            custom_build=settings.build_command,
        )
    deps: set[str] = set()
    for key in ("dependencies", "devDependencies"):
        if isinstance(package.get(key), dict):
            deps.update(package[key])

    def no_reader(path: str) -> bytes:
        raise BuildFailed(f"cannot read {path}")

    framework, title, framework_dirs, env = _framework(deps, paths, read or no_reader)
    if settings.node_version:
        env = {**env, "NODE_VERSION": settings.node_version}
    return BuildPlan(
        framework=framework,
        title=title if settings.build_command is None else f"{title}, the project's build command",
        package_manager=_package_manager(package, paths),
        install=bool(deps),
        output_dirs=_output_dirs(package, framework_dirs, settings),
        env={"COREPACK_ENABLE_DOWNLOAD_PROMPT": "0", **env},
        custom_install=settings.install_command,
        custom_build=settings.build_command,
    )


def _package(package_json: bytes | None) -> dict[str, Any] | None:
    if package_json is None:
        return None
    try:
        package = json.loads(package_json)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BuildFailed(f"package.json is not valid JSON: {exc}") from None
    if not isinstance(package, dict):
        raise BuildFailed("package.json must hold a JSON object")
    return package


def _output_dirs(
    package: dict[str, Any], framework_dirs: tuple[str, ...], settings: BuildSettings
) -> tuple[str, ...]:
    """outputDirectory, else libraDeploy.outputDir, else the framework's, else the usual ones."""
    if settings.output_directory:
        return (settings.output_directory,)
    own = package.get("libraDeploy") or {}
    explicit = own.get("outputDir") if isinstance(own, dict) else None
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit.strip("./") or ".." in explicit.split("/"):
            raise BuildFailed(
                f"libraDeploy.outputDir in package.json is not a directory of the project: {explicit!r}"
            )
        return (explicit.strip("/").removeprefix("./"),)
    return (*framework_dirs, *(d for d in OUTPUT_CANDIDATES if d not in framework_dirs))
