"""User commands: deploy a folder, follow it, look at a deployment, roll back. HTTP only.

These talk to a running service through its API (never to the database), like the CLIs of Vercel,
Netlify or Cloudflare Pages: ``--url`` and ``--token`` (or LIBRA_DEPLOY_URL and LIBRA_DEPLOY_TOKEN)
say where and who. Progress and logs go to stderr; stdout gets only the result (the site URL), so
``URL=$(libra-deploy deploy ./dist --project prj_...)`` works in a script.

``deploy`` uploads by content hash: it hashes the folder's files (minus what .gitignore files and
``.git`` exclude), asks which hashes the service lacks, uploads only those, then starts the
deployment naming every file by hash, and follows its live log (Server-Sent Events).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import pathspec
import requests
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from libra_deploy.errors import LibraError

STEPS = ("validate", "sync", "sandbox", "build", "deploy", "cleanup")
DEFAULT_URL = "http://127.0.0.1:3008"
#: How often a dropped live-log stream is reopened (with Last-Event-ID) before giving up.
RECONNECTS = 5

stderr = Console(stderr=True)


class Api:
    """The service's HTTP API, with the caller's token; an error answer raises LibraError."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        try:
            response = self.http.request(method, self.url + path, **kwargs)
        except requests.RequestException as exc:
            raise LibraError(f"cannot reach {self.url}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
                problem = f"{body.get('error')}: {body.get('message')}"
            except ValueError:
                problem = f"HTTP {response.status_code}"
            raise LibraError(f"{method} {path} failed ({response.status_code}) {problem}")
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, **kwargs).json()


def connection(command: Any) -> Any:
    command = click.option(
        "--token",
        envvar="LIBRA_DEPLOY_TOKEN",
        required=True,
        help="API token (or LIBRA_DEPLOY_TOKEN)",
    )(command)
    return click.option(
        "--url",
        envvar="LIBRA_DEPLOY_URL",
        default=DEFAULT_URL,
        show_default=True,
        help="The service's URL (or LIBRA_DEPLOY_URL)",
    )(command)


# The folder -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    path: str
    absolute: Path
    sha256: str
    size: int


def _ignore_specs(root: Path, directory: Path, inherited: list[tuple[Path, Any]]) -> list[tuple[Path, Any]]:
    gitignore = directory / ".gitignore"
    if gitignore.is_file():
        lines = gitignore.read_text(errors="replace").splitlines()
        return [*inherited, (directory, pathspec.GitIgnoreSpec.from_lines(lines))]
    return inherited


def _ignored(path: Path, is_dir: bool, specs: list[tuple[Path, Any]]) -> bool:
    for base, spec in specs:
        relative = path.relative_to(base).as_posix() + ("/" if is_dir else "")
        if spec.match_file(relative):
            return True
    return False


def collect(root: Path) -> tuple[list[Path], list[str]]:
    """The folder's files as git would see them: without .git and what .gitignore files exclude.

    A symbolic link to a file inside the folder is deployed as that file's contents; one that
    leads outside it (``env -> /proc/self/environ``, a home directory's key) is left out and
    named in the second list (relative paths), since deploying it would publish whatever it
    reaches on the machine that runs the CLI. ``root`` is a resolved path. Linked directories are
    not entered (os.walk's default).
    """
    found: list[Path] = []
    outside: list[str] = []
    specs_by_dir: dict[Path, list[tuple[Path, Any]]] = {}
    for current, dirs, files in os.walk(root):
        here = Path(current)
        parent_specs = specs_by_dir.get(here.parent, []) if here != root else []
        specs = _ignore_specs(root, here, parent_specs)
        specs_by_dir[here] = specs
        dirs[:] = sorted(d for d in dirs if d != ".git" and not _ignored(here / d, True, specs))
        for name in sorted(files):
            path = here / name
            if _ignored(path, False, specs):
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                outside.append(path.relative_to(root).as_posix())
            elif path.is_file():
                found.append(path)
    return found, outside


def hash_files(root: Path, paths: list[Path], limits: dict[str, int]) -> list[LocalFile]:
    """Hash the files, refusing the folder early when it breaks one of the service's input limits."""
    if len(paths) > limits.get("maxFiles", len(paths)):
        raise LibraError(f"{root} holds {len(paths)} files; the service accepts at most {limits['maxFiles']}")
    files: list[LocalFile] = []
    total = 0
    for path in paths:
        relative = path.relative_to(root).as_posix()
        size = path.stat().st_size
        if size > limits.get("maxFileBytes", size):
            raise LibraError(
                f"{relative} is {size} bytes; the service accepts at most {limits['maxFileBytes']}"
            )
        if len(relative.encode()) > limits.get("maxPathLength", len(relative.encode())):
            raise LibraError(f"the path {relative} is longer than {limits['maxPathLength']} bytes")
        total += size
        if total > limits.get("maxTotalBytes", total):
            raise LibraError(f"{root} holds more than {limits['maxTotalBytes']} bytes, the service's limit")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        files.append(LocalFile(relative, path, digest, size))
    if not files:
        raise LibraError(f"{root} has no files to deploy")
    return files


def upload_missing(api: Api, project_id: str, files: list[LocalFile]) -> int:
    """Upload the files whose contents the service lacks; return how many were sent."""
    by_hash = {f.sha256: f for f in files}
    missing = api.json("POST", f"/projects/{project_id}/files/check", json={"hashes": list(by_hash)})[
        "missing"
    ]
    if not missing:
        return 0
    with Progress(
        TextColumn("upload"), BarColumn(), TextColumn("{task.completed}/{task.total} files"), console=stderr
    ) as progress:
        task = progress.add_task("upload", total=len(missing))
        for sha in missing:
            api.call(
                "PUT",
                f"/projects/{project_id}/files/{sha}",
                data=by_hash[sha].absolute.read_bytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            progress.advance(task)
    return len(missing)


# Following a deployment -------------------------------------------------------------------------


@dataclass
class Event:
    kind: str
    data: Any
    id: str | None


def events(api: Api, deployment_id: str) -> Iterator[Event]:
    """The deployment's live events until its end, reopening a dropped stream where it stopped."""
    last_id: str | None = None
    for _attempt in range(RECONNECTS):
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        try:
            response = api.call(
                "GET",
                f"/deployments/{deployment_id}/logs?follow=1",
                headers=headers,
                stream=True,
                timeout=120,
            )
            with response:
                # chunk_size=None: data as it arrives, not once a buffer fills.
                for event in _parse(_lines(response.iter_content(chunk_size=None))):
                    if event.id is not None:
                        last_id = event.id
                    yield event
                    if event.kind == "end":
                        return
        except requests.RequestException:
            continue
    raise LibraError(f"lost the live log of {deployment_id}; see `libra-deploy status {deployment_id}`")


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r").decode()


def _parse(lines: Iterator[str]) -> Iterator[Event]:
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "event" in fields:
                yield Event(fields["event"], json.loads(fields.get("data", "null")), fields.get("id"))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def _log_line(data: dict[str, Any]) -> str:
    stamp = str(data.get("timestamp", ""))[11:19]
    level = data.get("level", "info")
    color = {"warning": "yellow", "error": "red"}.get(level, "dim")
    return f"[{color}]{stamp} {data.get('step') or '-':8}[/] {escape(str(data.get('message', '')))}"


def follow(api: Api, deployment_id: str) -> dict[str, Any]:
    """Show a progress bar per step and the live log until the deployment ends; return the end event."""
    end: dict[str, Any] = {}
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description:9}"),
        BarColumn(bar_width=24),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=stderr,
        transient=False,
    ) as progress:
        bars: dict[str, TaskID] = {
            step: progress.add_task(step, total=1, state="pending", start=False) for step in STEPS
        }
        for event in events(api, deployment_id):
            if event.kind == "log":
                progress.console.print(_log_line(event.data))
            elif event.kind in ("status", "end"):
                for step, state in (event.data.get("steps") or {}).items():
                    if step not in bars:
                        continue
                    if state != "pending":
                        progress.start_task(bars[step])
                    done = state in ("completed", "failed", "skipped")
                    progress.update(bars[step], completed=1 if done else 0, state=state)
                    if done:
                        progress.stop_task(bars[step])
                if event.kind == "end":
                    end = event.data
    return end


# The commands -----------------------------------------------------------------------------------


@click.command("deploy")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--project", "project_id", required=True, help="The project to deploy to")
@click.option("--domain", default=None, help="A custom domain to attach")
@connection
def deploy(directory: Path, project_id: str, domain: str | None, url: str, token: str) -> None:
    """Deploy a folder: upload what the service lacks, follow the build, print the site's URL."""
    api = Api(url, token)
    root = directory.resolve()
    limits = api.json("GET", "/").get("limits", {})
    paths, outside = collect(root)
    if outside:
        stderr.print(
            f"[yellow]left out {len(outside)} symbolic links that lead outside {directory}: "
            f"{escape(', '.join(outside[:5]))}{' ...' if len(outside) > 5 else ''}[/]"
        )
    files = hash_files(root, paths, limits)
    sent = upload_missing(api, project_id, files)
    stderr.print(
        f"{len(files)} files, {sum(f.size for f in files)} bytes; uploaded {sent}, the rest were there"
    )
    body: dict[str, Any] = {
        "projectId": project_id,
        "files": [{"path": f.path, "sha256": f.sha256} for f in files],
        "replaceFiles": True,
    }
    if domain:
        body["customDomain"] = domain
    # A key of its own: if the answer is lost and the command is run again, no second deployment.
    accepted = api.json("POST", "/deploy", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
    deployment_id = accepted["deploymentId"]
    stderr.print(f"deployment {deployment_id} queued")
    end = follow(api, deployment_id)
    _finish(deployment_id, end)
    click.echo(end.get("url") or "")


def _finish(deployment_id: str, end: dict[str, Any]) -> None:
    status = end.get("status")
    if status != "completed":
        reason = end.get("error") or status
        raise LibraError(f"deployment {deployment_id} {status}: {reason}")
    stderr.print(f"[green]deployment {deployment_id} completed[/]")


@click.command("status")
@click.argument("deployment_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole JSON body")
@connection
def status(deployment_id: str, as_json: bool, url: str, token: str) -> None:
    """Show a deployment: status, steps with their durations, URL, error."""
    body = Api(url, token).json("GET", f"/deployments/{deployment_id}")
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"{body['deploymentId']}  {body['status']}  {body.get('progress', 0)}%")
    durations = body.get("durations", {}).get("steps", {})
    for step, state in body.get("steps", {}).items():
        took = durations.get(step)
        click.echo(f"  {step:9} {state['status']:12} {'' if took is None else f'{took:.1f} s'}")
    for key in ("url", "deploymentUrl", "errorCode", "error"):
        if body.get(key):
            click.echo(f"  {key}: {body[key]}")
    if body.get("createdBy", {}).get("email"):
        click.echo(f"  by: {body['createdBy']['email']} at {body.get('createdAt')}")


@click.command("logs")
@click.argument("deployment_id")
@click.option("--follow", "-f", is_flag=True, help="Stream new lines until the deployment ends")
@connection
def logs(deployment_id: str, follow: bool, url: str, token: str) -> None:
    """Print a deployment's log; with --follow, stream it live (exit 1 if it does not complete)."""
    api = Api(url, token)
    if follow:
        end: dict[str, Any] = {}
        for event in events(api, deployment_id):
            if event.kind == "log":
                click.echo(_plain(event.data))
            elif event.kind == "end":
                end = event.data
        if end.get("status") != "completed":
            raise LibraError(
                f"deployment {deployment_id} {end.get('status')}: {end.get('error') or ''}".rstrip(": ")
            )
        return
    cursor = 0
    while True:
        page = api.json("GET", f"/deployments/{deployment_id}/logs", params={"cursor": cursor})
        for line in page["lines"]:
            click.echo(_plain(line))
        if not page["lines"]:
            return
        cursor = page["nextCursor"]


def _plain(line: dict[str, Any]) -> str:
    stamp = datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).strftime("%H:%M:%S")
    return f"{stamp} [{line.get('step') or '-'}] {line['message']}"


@click.command("rollback")
@click.option("--project", "project_id", required=True, help="The project to roll back")
@click.option("--to", "deployment_id", default=None, help="An earlier deployment (default: the one before)")
@connection
def rollback(project_id: str, deployment_id: str | None, url: str, token: str) -> None:
    """Make an earlier deployment live again, at once (nothing is built); print the site's URL."""
    body = {"deploymentId": deployment_id} if deployment_id else {}
    answer = Api(url, token).json("POST", f"/projects/{project_id}/rollback", json=body)
    stderr.print(f"{answer['deploymentId']} is live again (was {answer['previousDeploymentId']})")
    click.echo(answer["url"])


COMMANDS = (deploy, status, logs, rollback)
