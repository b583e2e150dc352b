"""Step 4: build the project in its sandbox and store the output content-addressed.

Success is judged by exit codes, never by words in the output. A failing command fails the step
with the last lines of its output in the error, so the cause is visible without opening the logs;
the whole build output is kept in the object store (``logs/<deployment>/build.log``).

Dependencies are cached per organisation, keyed by the package manager, the Node major version, the
sandbox provider and the lockfile's hash: a hit restores ``node_modules`` into the sandbox and skips
the install; a miss installs, then stores the tarred ``node_modules`` for the next build. The cache
is scoped to the organisation because an install runs the project's own scripts, which could plant
anything in ``node_modules``; a cache shared across organisations would carry that to others.

The project's build settings apply here: the build runs in its root directory (a monorepo's
package: the whole tree is in the sandbox, but the commands run there and the output is looked for
there), its install and build commands run through ``sh -c``, and its Node.js version hint is
logged and passed as NODE_VERSION (the sandbox's image decides which Node.js runs). Its build
variables are decrypted when the build starts and passed to the install and build commands only,
and each value is masked in every line this step logs or stores and in its errors.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session

from libra_deploy import build_variables
from libra_deploy.builds import BuildPlan, BuildSettings, plan_build
from libra_deploy.errors import BuildFailed, LibraError
from libra_deploy.models import Deployment, Project
from libra_deploy.ports import Manifest, ObjectNotFound, ObjectStore, SandboxProvider
from libra_deploy.redact import masker, redact_text
from libra_deploy.sources import blob_key, sha256_hex
from libra_deploy.steps import sandbox
from libra_deploy.steps.runner import StepContext

TAIL_LINES = 20
CACHE_DIR = ".libra-cache"
CACHE_ARCHIVE = f"{CACHE_DIR}/deps.tar.gz"
#: Larger dependency trees are not cached (the transfer would cost more than the install).
MAX_CACHE_BYTES = 512 * 1024 * 1024
#: Output files checked against the store at once, and the bytes held before a batch is stored.
STORE_BATCH_FILES = 256
STORE_BATCH_BYTES = 64 * 1024 * 1024
#: Time allowed to probe the toolchain and to pack or unpack the cache, beyond the build's own.
SHORT_COMMAND_S = 60.0


def build_log_key(deployment_id: str) -> str:
    return f"logs/{deployment_id}/build.log"


def artifact_key(deployment_id: str) -> str:
    return f"artifacts/{deployment_id}/output.tar.gz"


@dataclass(frozen=True)
class BuildResult:
    output: Manifest
    #: The sandbox the build ran in, when it had to be created again.
    sandbox: sandbox.SandboxRef | None = None
    #: The tarred output in the object store, when the project was built.
    artifact: str | None = None
    #: The build variables the build ran with, {name: version}; None when nothing was built.
    variables: dict[str, int] | None = None


class _Build:
    """One build in one sandbox: runs commands, keeps the whole log and the tail of the last one.

    Commands run in the project's root directory. Only those that ask for the build variables
    (install and build) get them, and every line of output is masked before it goes anywhere.
    """

    def __init__(
        self,
        ctx: StepContext,
        provider: SandboxProvider,
        sandbox_id: str,
        plan: BuildPlan,
        *,
        root: str = "",
        variables: Mapping[str, str] | None = None,
        mask: Callable[[str], str] = str,
    ) -> None:
        self.ctx = ctx
        self.provider = provider
        self.sandbox_id = sandbox_id
        self.plan = plan
        self.root = root
        # The service's own build environment (a framework's switches, NODE_VERSION from the
        # project's setting) wins over a variable of the same name.
        self.variables_env = {**(variables or {}), **plan.env}
        self.mask = mask
        self.log: list[str] = []

    def say(self, message: str, level: str = "info") -> None:
        """Log a line of the step's own, masked as the build's output is: the step's lines quote
        values a variable may hold too (a NODE_VERSION hint, a provider's error)."""
        self.ctx.log(self.mask(message), level)

    def path(self, relative: str) -> str:
        """A path of the root directory, as a path of the sandbox's project directory."""
        return f"{self.root}/{relative}" if self.root else relative

    def run(
        self,
        command: tuple[str, ...],
        *,
        title: str | None = None,
        quiet: bool = False,
        timeout_s: float | None = None,
        network: bool = False,
        variables: bool = False,
    ) -> tuple[int, list[str]]:
        shown = self.mask(_shown(command))
        if title:
            self.ctx.log(f"{title}: {shown}")
        self.log.append(f"$ {shown}")
        output: list[str] = []

        def on_output(raw: str) -> None:
            line = self.mask(raw)
            output.append(line)
            self.log.append(line)
            if not quiet:
                self.ctx.log(line)

        budget = self.ctx.remaining_s() if timeout_s is None else min(timeout_s, self.ctx.remaining_s())
        code = self.provider.run(
            self.sandbox_id,
            command,
            env=self.variables_env if variables else self.plan.env,
            timeout_s=budget,
            on_output=on_output,
            cwd=self.root,
            network=network,
        )
        self.log.append(f"[exit code {code}]")
        return code, output

    def must(self, command: tuple[str, ...], title: str, *, network: bool = False) -> None:
        """Run one of the project's own commands (with the build variables); a failure fails the build."""
        code, output = self.run(command, title=title, network=network, variables=True)
        if code != 0:
            tail = "\n".join(deque(output, maxlen=TAIL_LINES))
            shown = self.mask(_shown(command))
            raise BuildFailed(f"`{shown}` exited with code {code}\n{tail}".rstrip())


def _shown(command: tuple[str, ...]) -> str:
    """How a command shows in the log: a project's own shell command as it was typed."""
    return command[2] if command[:2] == ("sh", "-c") and len(command) == 3 else " ".join(command)


def _subtree(manifest: Manifest, directory: str) -> Manifest:
    """The files under ``directory``, with paths relative to it ("" is the whole tree)."""
    if not directory:
        return manifest
    prefix = directory.rstrip("/") + "/"
    return {path[len(prefix) :]: entry for path, entry in manifest.items() if path.startswith(prefix)}


def _build_settings(project: Project) -> BuildSettings:
    return BuildSettings(
        install_command=project.install_command,
        build_command=project.build_command,
        output_directory=project.output_directory,
        node_version=project.node_version,
    )


def execute(ctx: StepContext) -> BuildResult:
    source: Manifest = ctx.deployment.source_manifest or {}
    store = ctx.runtime.store
    root = ctx.project.root_directory or ""
    tree = _subtree(source, root)
    if root:
        if not tree:
            raise BuildFailed(f"the root directory {root}/ holds no files", code="ROOT_DIRECTORY_EMPTY")
        ctx.log(f"Root directory: {root}/ ({len(tree)} files)")

    def read(path: str) -> bytes:
        return store.get(blob_key(str(tree[path]["sha256"])))

    package = tree.get("package.json")
    plan = plan_build(
        read("package.json") if package else None, tree.keys(), read, _build_settings(ctx.project)
    )
    if plan.is_static:
        site = _subtree(tree, plan.static_dir)
        if not site:
            raise BuildFailed(
                f"the output directory {plan.static_dir}/ holds no files", code="OUTPUT_DIRECTORY_EMPTY"
            )
        where = f" in {plan.static_dir}/" if plan.static_dir else ""
        ctx.log(f"No build script: the {len(site)} source files{where} are the site")
        return BuildResult(site)
    # Read when the build starts: a variable deleted while the deployment waited is simply not there.
    with ctx.runtime.read_sessions() as session:
        variables = build_variables.for_build(session, ctx.runtime.settings, ctx.project.id)
    mask = masker(variables.values.values())
    provider, ref = sandbox.ensure(ctx)
    build = _Build(ctx, provider, ref.sandbox_id, plan, root=root, variables=variables.values, mask=mask)
    pm = plan.package_manager
    build.say(f"Framework: {plan.title}" + (f"; package manager: {pm.name}" if pm else ""))
    if variables.versions:
        names = ", ".join(f"{name} (v{version})" for name, version in variables.versions.items())
        build.say(f"Build variables: {names}")
    try:
        node = _node_version(build, required=pm is not None)
        _check_node_hint(build, node, variables.values.get("NODE_VERSION"))
        install = plan.install_command
        if install is not None:
            _install(ctx, build, tree, node, install)
        build.must(plan.build_command, "Building")
        output, artifact = _collect_output(ctx, build)
    except LibraError as exc:
        # An error of the sandbox provider may quote what the build printed: mask it as the output is.
        exc.message = mask(exc.message)
        exc.args = (exc.message,)
        raise
    finally:
        _store_log(ctx, build)
    return BuildResult(output, ref, artifact, variables.versions)


def _node_version(build: _Build, *, required: bool) -> str:
    """The sandbox's Node.js version; "" when it has none and the build (no package.json) may not need it."""
    code, output = build.run(("node", "--version"), quiet=True, timeout_s=SHORT_COMMAND_S)
    version = output[-1].strip() if output else ""
    if code != 0 or not version.startswith("v"):
        if required:
            raise BuildFailed(
                "Node.js is not available in the sandbox (`node --version` failed)", code="NO_NODE"
            )
        return ""
    build.say(f"Node.js {version}")
    return version


def _check_node_hint(build: _Build, node: str, variable: str | None) -> None:
    """Say whether the sandbox's Node.js is the one the project asks for; it cannot be switched here."""
    hint = build.plan.env.get("NODE_VERSION") or variable
    if not hint:
        return
    wanted = hint.removeprefix("v").split(".")[0]
    have = node.removeprefix("v").split(".")[0]
    if wanted == have:
        build.say(f"NODE_VERSION={hint}: the sandbox's Node.js {node} matches")
    else:
        build.say(
            f"NODE_VERSION={hint} is passed to the build, but the {build.provider.name} sandbox runs Node.js "
            f"{node or '(none)'}: its image decides, not the hint",
            "warning",
        )


def _cache_key(ctx: StepContext, build: _Build, source: Manifest, node: str) -> str | None:
    pm = build.plan.package_manager
    if pm is None or pm.lockfile is None or not node:
        return None
    lock = str(source[pm.lockfile]["sha256"])
    major = node.split(".")[0]
    # The project's own install command may install something else than the lockfile's tree.
    custom = f"|{build.plan.custom_install}" if build.plan.custom_install is not None else ""
    identity = hashlib.sha256(f"{pm.name}|{major}|{build.provider.name}|{lock}{custom}".encode()).hexdigest()
    return f"cache/deps/{ctx.deployment.org_id}/{identity}.tar.gz"


def _install(ctx: StepContext, build: _Build, source: Manifest, node: str, command: tuple[str, ...]) -> None:
    pm = build.plan.package_manager
    key = _cache_key(ctx, build, source, node)
    store = ctx.runtime.store
    if key is not None and pm is not None:
        try:
            archive = store.get(key)
        except ObjectNotFound:
            archive = None
        if archive is not None:
            build.provider.write_files(build.sandbox_id, [(build.path(CACHE_ARCHIVE), archive)])
            code, _ = build.run(("tar", "-xzf", CACHE_ARCHIVE), quiet=True, timeout_s=SHORT_COMMAND_S)
            build.run(("rm", "-rf", CACHE_DIR), quiet=True, timeout_s=SHORT_COMMAND_S)
            if code == 0:
                size = len(archive) // 1024
                build.say(f"Dependencies restored from the cache ({size} KiB, {pm.lockfile} unchanged)")
                return
            build.say("The dependency cache could not be unpacked; installing", "warning")
        else:
            build.say(f"No dependency cache for this {pm.lockfile} yet")
    started = time.monotonic()
    # Installing is the only command that may reach the network (where the sandbox can cut it off).
    build.must(command, "Installing dependencies", network=True)
    build.say(f"Dependencies installed in {time.monotonic() - started:.1f} s")
    if key is not None:
        _save_cache(ctx, build, key)


def _save_cache(ctx: StepContext, build: _Build, key: str) -> None:
    # The cache only saves time: failing to save it is a warning, never a failed build.
    try:
        code, _ = build.run(
            (
                "sh",
                "-c",
                f"test -d node_modules && mkdir -p {CACHE_DIR} && tar -czf {CACHE_ARCHIVE} node_modules",
            ),
            quiet=True,
            timeout_s=SHORT_COMMAND_S * 5,
        )
        if code != 0:
            return
        archive = dict(build.provider.read_files(build.sandbox_id, build.path(CACHE_DIR))).get("deps.tar.gz")
        build.run(("rm", "-rf", CACHE_DIR), quiet=True, timeout_s=SHORT_COMMAND_S)
        if archive is None or len(archive) > MAX_CACHE_BYTES:
            return
        ctx.runtime.store.put(key, archive, content_type="application/gzip")
        build.say(f"Dependencies cached ({len(archive) // 1024} KiB)")
    except LibraError as exc:
        build.say(f"Could not cache the dependencies: {exc.message}", "warning")


def _collect_output(ctx: StepContext, build: _Build) -> tuple[Manifest, str]:
    store = ctx.runtime.store
    plan = build.plan
    for directory in plan.output_dirs:
        manifest: Manifest = {}
        pending: dict[str, bytes] = {}
        stored = 0
        packed = io.BytesIO()
        with tarfile.open(fileobj=packed, mode="w:gz") as tar:
            for path, data in build.provider.read_files(build.sandbox_id, build.path(directory)):
                sha = sha256_hex(data)
                pending[blob_key(sha)] = data
                manifest[path] = {"sha256": sha, "size": len(data)}
                info = tarfile.TarInfo(path)
                info.size = len(data)
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(data))
                if len(pending) >= STORE_BATCH_FILES or sum(map(len, pending.values())) >= STORE_BATCH_BYTES:
                    stored += _store_blobs(store, pending)
            stored += _store_blobs(store, pending)
        if manifest:
            size = sum(e["size"] for e in manifest.values())
            build.say(f"Build output: {directory}/ with {len(manifest)} files, {size} bytes ({stored} new)")
            artifact = artifact_key(ctx.deployment.id)
            store.put(artifact, packed.getvalue(), content_type="application/gzip")
            return dict(sorted(manifest.items())), artifact
    raise BuildFailed(f"the build produced no files in {', '.join(d + '/' for d in plan.output_dirs)}")


def _store_blobs(store: ObjectStore, pending: dict[str, bytes]) -> int:
    """Store the blobs the store lacks and empty ``pending``; return how many were new.

    One existence check per batch: a remote store answers it with parallel requests.
    """
    missing = store.missing(pending)
    for key in sorted(missing):
        store.put(key, pending[key])
    pending.clear()
    return len(missing)


def _store_log(ctx: StepContext, build: _Build) -> None:
    # Masked line by line already; the redactor also hides the service's secrets and credentials
    # of known shapes, as it does for the lines in the database.
    text = redact_text("\n".join(build.log) + "\n")
    try:
        ctx.runtime.store.put(
            build_log_key(ctx.deployment.id), text.encode(), content_type="text/plain; charset=utf-8"
        )
    except LibraError as exc:
        build.say(f"Could not store the build log: {exc.message}", "warning")


def record(session: Session, deployment: Deployment, project: Project, result: BuildResult) -> None:
    deployment.output_manifest = result.output
    if result.sandbox is not None:
        sandbox.remember(deployment, result.sandbox)
    deployment.artifact_key = result.artifact
    if result.variables is not None:
        deployment.build_variables = result.variables
