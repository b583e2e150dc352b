"""Step 4: build the project in its sandbox and store the output content-addressed.

Success is judged by exit codes, never by words in the output. A failing command fails the step
with the last lines of its output in the error, so the cause is visible without opening the logs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sqlalchemy.orm import Session

from libra_deploy.builds import BuildPlan, needs_network, plan_build
from libra_deploy.errors import BuildFailed
from libra_deploy.models import Deployment, Project
from libra_deploy.ports import Manifest, SandboxProvider
from libra_deploy.sources import blob_key, sha256_hex
from libra_deploy.steps import sandbox
from libra_deploy.steps.runner import StepContext

TAIL_LINES = 20


@dataclass(frozen=True)
class BuildResult:
    output: Manifest
    #: The sandbox the build ran in, when it had to be created again.
    sandbox: sandbox.SandboxRef | None = None


def execute(ctx: StepContext) -> BuildResult:
    source: Manifest = ctx.deployment.source_manifest or {}
    package = source.get("package.json")
    plan = plan_build(ctx.runtime.store.get(blob_key(str(package["sha256"]))) if package else None)
    if plan.is_static:
        ctx.log(f"No build script: the {len(source)} source files are the site")
        return BuildResult(source)
    provider, ref = sandbox.ensure(ctx)
    for title, command in plan.commands:
        _run(ctx, provider, ref.sandbox_id, title, command, plan)
    return BuildResult(_collect_output(ctx, provider, ref.sandbox_id, plan), ref)


def _run(
    ctx: StepContext,
    provider: SandboxProvider,
    sandbox_id: str,
    title: str,
    command: tuple[str, ...],
    plan: BuildPlan,
) -> None:
    shown = " ".join(command)
    ctx.log(f"{title}: {shown}")
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def on_output(line: str) -> None:
        tail.append(line)
        ctx.log(line)

    code = provider.run(
        sandbox_id,
        command,
        env=plan.env,
        timeout_s=ctx.remaining_s(),
        on_output=on_output,
        network=needs_network(command),
    )
    if code != 0:
        output = "\n".join(tail)
        raise BuildFailed(f"`{shown}` exited with code {code}\n{output}".rstrip())


def _collect_output(
    ctx: StepContext, provider: SandboxProvider, sandbox_id: str, plan: BuildPlan
) -> Manifest:
    store = ctx.runtime.store
    for directory in plan.output_dirs:
        manifest: Manifest = {}
        stored = 0
        for path, data in provider.read_files(sandbox_id, directory):
            sha = sha256_hex(data)
            key = blob_key(sha)
            if store.missing([key]):
                store.put(key, data)
                stored += 1
            manifest[path] = {"sha256": sha, "size": len(data)}
        if manifest:
            size = sum(e["size"] for e in manifest.values())
            ctx.log(f"Build output: {directory}/ with {len(manifest)} files, {size} bytes ({stored} new)")
            return dict(sorted(manifest.items()))
    raise BuildFailed(f"the build produced no files in {', '.join(d + '/' for d in plan.output_dirs)}")


def record(session: Session, deployment: Deployment, project: Project, result: BuildResult) -> None:
    deployment.output_manifest = result.output
    if result.sandbox is not None:
        sandbox.remember(deployment, result.sandbox)
