"""The local sandbox isolates builds: limits, bubblewrap, the network only for installs, no secrets."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from libra_deploy.adapters.local_sandbox import LocalSandboxProvider, ResourceLimits
from libra_deploy.errors import ConfigError, ProviderError
from libra_deploy.models import DeadLetter
from libra_deploy.ports import SandboxSpec
from libra_deploy.redact import register_secrets
from tests.helpers import custom_app, deploy, wait_for

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
LIMITS = ResourceLimits(cpu_seconds=60, memory_bytes=1024 * MIB, file_bytes=16 * MIB, max_processes=256)


class Sandbox:
    """A sandbox of a provider, with a helper that runs a shell script in it and keeps its output."""

    def __init__(self, provider: LocalSandboxProvider) -> None:
        self.provider = provider
        self.id = provider.create(
            SandboxSpec(f"dep_{uuid.uuid4().hex[:12]}", f"prj_{uuid.uuid4().hex[:12]}", 60)
        )

    def run(
        self, script: str, *, network: bool = False, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        lines: list[str] = []
        code = self.provider.run(
            self.id,
            ["sh", "-c", script],
            env=env or {},
            timeout_s=120,
            on_output=lines.append,
            network=network,
        )
        return code, "\n".join(lines)

    def host_dir(self) -> Path:
        return self.provider.project_dir(self.id)


def _provider(
    root: Path, isolation: str = "bubblewrap", limits: ResourceLimits = LIMITS
) -> LocalSandboxProvider:
    return LocalSandboxProvider(root / "sandboxes", limits=limits, isolation=isolation)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A service data directory with a secret file beside the sandboxes."""
    (tmp_path / "service-secret.txt").write_text("the service's own file\n")
    return tmp_path


@pytest.fixture
def sandbox(data_dir) -> Sandbox:
    return Sandbox(_provider(data_dir))


def test_bubblewrap_is_available_here(sandbox):
    # bin/setup installs it; without it every isolation test below would prove nothing.
    assert shutil.which("bwrap")
    assert sandbox.provider.isolation == "bubblewrap"


def test_only_the_sandbox_is_writable(sandbox):
    code, out = sandbox.run(
        "echo built > out.txt && echo home > $HOME/h && echo tmp > /tmp/t && echo ok;"
        "for target in /usr/evil /etc/evil /evil /sandbox/../evil; do "
        "  (echo x > $target) 2>/dev/null && echo WROTE $target; done; true"
    )
    assert code == 0, out
    assert "ok" in out
    assert "WROTE" not in out
    assert (sandbox.host_dir() / "out.txt").read_text() == "built\n"
    assert (sandbox.host_dir().parent / "tmp" / "t").read_text() == "tmp\n"


def test_the_services_files_and_other_deployments_are_invisible(data_dir):
    provider = _provider(data_dir)
    mine, theirs = Sandbox(provider), Sandbox(provider)
    (theirs.host_dir() / "their-secret.txt").write_text("theirs\n")
    probes = [
        str(data_dir / "service-secret.txt"),
        str(theirs.host_dir() / "their-secret.txt"),
        str(ROOT / "pyproject.toml"),
        "/root",
        "/work",
        f"/sandbox/../{theirs.id}",
    ]
    script = "; ".join(f"test -e '{p}' && echo SEEN {p}" for p in probes) + "; ls -a ../.. ; true"
    code, out = mine.run(script)
    assert code == 0, out
    assert "SEEN" not in out
    assert set(out.split()) <= {
        ".",
        "..",
        "bin",
        "dev",
        "etc",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "proc",
        "sandbox",
        "sbin",
        "tmp",
        "usr",
    }


def test_the_environment_is_minimal_and_never_holds_a_secret(sandbox, monkeypatch):
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("CANARY_API_TOKEN", canary)
    registered = f"registered-{uuid.uuid4().hex}"
    register_secrets([registered])
    code, out = sandbox.run("env", env={"NODE_ENV": "production", "LEAK": f"x{registered}x"})
    assert code == 0
    names = {line.split("=", 1)[0] for line in out.splitlines()}
    assert names <= {"PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR", "CI", "NODE_ENV", "PWD", "SHLVL", "_"}
    assert "NODE_ENV" in names
    assert canary not in out
    assert registered not in out


def _listener() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


def test_the_network_is_there_only_for_installs(sandbox):
    server, port = _listener()
    probe = (
        "node -e \"const s = require('net').connect(" + str(port) + ", '127.0.0.1');"
        "s.on('connect', () => { console.log('CONNECTED'); process.exit(0); });"
        "s.on('error', (e) => { console.log('NO NETWORK ' + e.code); process.exit(3); });\""
    )
    try:
        offline_code, offline = sandbox.run(probe, network=False)
        online_code, online = sandbox.run(probe, network=True)
    finally:
        server.close()
    assert (offline_code, online_code) == (3, 0), (offline, online)
    assert "NO NETWORK" in offline
    assert "CONNECTED" in online


def test_only_the_install_command_gets_the_network(client, runtime, worker, tenant):
    """A build whose script reaches out finds no network; only the dependency install has it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    probe = (
        "const net = require('net');"
        f"const s = net.connect({port}, '127.0.0.1', () => {{ console.log('CONNECTED'); s.end(); done(); }});"
        "s.on('error', () => { console.log('NO NETWORK'); done(); });"
        "function done() { require('fs').mkdirSync('dist', {recursive: true});"
        " require('fs').writeFileSync('dist/index.html', 'probed'); }"
    )
    files = {"package.json": json.dumps({"scripts": {"build": "node probe.js"}}), "probe.js": probe}
    try:
        status = wait_for(client, tenant, deploy(client, tenant, files))
    finally:
        server.close()
    assert status["status"] == "completed", status
    assert "NO NETWORK" in status["logs"]
    assert "CONNECTED" not in status["logs"]


@pytest.mark.parametrize("isolation", ["bubblewrap", "none"])
def test_cpu_time_is_limited(data_dir, isolation):
    limits = ResourceLimits(cpu_seconds=1, memory_bytes=1024 * MIB, file_bytes=16 * MIB, max_processes=256)
    code, out = Sandbox(_provider(data_dir, isolation, limits)).run("while :; do :; done")
    assert code != 0, out


@pytest.mark.parametrize("isolation", ["bubblewrap", "none"])
def test_memory_is_limited(data_dir, isolation):
    sandbox = Sandbox(_provider(data_dir, isolation))
    small = sandbox.run("node -e \"Buffer.alloc(64 << 20); console.log('small ok')\"")
    big = sandbox.run("node -e \"Buffer.alloc(1536 << 20); console.log('big ok')\"")
    assert small == (0, "small ok")
    assert big[0] != 0
    assert "big ok" not in big[1]


@pytest.mark.parametrize("isolation", ["bubblewrap", "none"])
def test_file_size_is_limited(data_dir, isolation):
    limits = ResourceLimits(cpu_seconds=60, memory_bytes=1024 * MIB, file_bytes=1 * MIB, max_processes=256)
    sandbox = Sandbox(_provider(data_dir, isolation, limits))
    code, out = sandbox.run("head -c 3000000 /dev/zero > big.bin")
    assert code != 0, out
    assert (sandbox.host_dir() / "big.bin").stat().st_size <= 1 * MIB


def test_the_number_of_processes_is_limited(data_dir):
    limits = ResourceLimits(cpu_seconds=60, memory_bytes=1024 * MIB, file_bytes=16 * MIB, max_processes=16)
    sandbox = Sandbox(_provider(data_dir, "bubblewrap", limits))
    code, out = sandbox.run("for i in $(seq 1 64); do sleep 1 & done; wait; echo all started")
    assert code != 0 or "all started" not in out, out
    assert "fork" in out.lower(), out


def test_a_timeout_kills_the_whole_sandboxed_process_tree(sandbox):
    from libra_deploy.errors import DeploymentTimeout

    with pytest.raises(DeploymentTimeout):
        sandbox.provider.run(
            sandbox.id, ["sh", "-c", "sleep 60 & sleep 60"], env={}, timeout_s=1, on_output=print
        )


# Symlinks a build leaves in its sandbox ---------------------------------------------------------------
# The build sees its links resolved inside bubblewrap; the host reading or writing the sandbox would
# see them resolved on the host, where ../../.. from a project directory is the service's data.


def _failed_on_a_symlink(status: dict, link: str) -> None:
    assert status["status"] == "failed", status
    assert status["errorCode"] == "SANDBOX_SYMLINK", status
    assert f"{link} is a symbolic link" in status["error"]
    # The same sandbox would refuse it again: one attempt, not three.
    assert status["steps"]["build"]["attempts"] == 1
    assert status["steps"]["deploy"]["status"] == "skipped"


@pytest.mark.parametrize("target", ["../../..", "DATA_DIR"], ids=["relative", "absolute"])
def test_an_output_directory_linked_out_of_the_sandbox_fails_the_build(
    client, worker, tenant, settings, target
):
    canary = settings.data_dir / f"canary-{uuid.uuid4().hex}.txt"
    canary.write_text("the service's own file\n")
    link = str(settings.data_dir) if target == "DATA_DIR" else target
    files = {"package.json": json.dumps({"scripts": {"build": f"ln -s {link} dist"}})}
    try:
        status = wait_for(client, tenant, deploy(client, tenant, files))
    finally:
        canary.unlink()

    _failed_on_a_symlink(status, "/sandbox/project/dist")
    assert client.get(f"/sites/{tenant.project_id}/{canary.name}").status_code == 404


def test_an_output_directory_under_a_linked_directory_fails_the_build(client, worker, tenant, settings):
    outside = settings.data_dir / f"outside-{uuid.uuid4().hex}"
    (outside / "site").mkdir(parents=True)
    (outside / "site" / "index.html").write_text("not the build's\n")
    package = {"scripts": {"build": f"ln -s {outside} out"}, "libraDeploy": {"outputDir": "out/site"}}
    try:
        status = wait_for(client, tenant, deploy(client, tenant, {"package.json": json.dumps(package)}))
    finally:
        shutil.rmtree(outside)

    _failed_on_a_symlink(status, "/sandbox/project/out")
    assert client.get(f"/sites/{tenant.project_id}/").status_code == 404


def test_a_tmp_directory_linked_out_of_the_sandbox_is_not_bound_into_the_next_command(
    client, worker, tenant, settings
):
    """bubblewrap binds the sandbox's tmp by its host path: it must not be a link to the host's files."""
    # The tests' data directory is private to root: bound, the sandbox user could not list it. A
    # directory it may read shows what a bind of the host's would give it.
    outside = settings.data_dir / f"outside-{uuid.uuid4().hex}"
    outside.mkdir(mode=0o755)
    canary = outside / "canary.txt"
    canary.write_text("the service's own file\n")
    install = f"rm -rf /sandbox/tmp && ln -s {outside} /sandbox/tmp"
    build = f"mkdir -p dist && cp /tmp/{canary.name} dist/ && echo built > dist/index.html"
    response = client.patch(
        f"/projects/{tenant.project_id}", json={"installCommand": install}, headers=tenant.headers
    )
    assert response.status_code == 200, response.get_json()
    try:
        files = {"package.json": json.dumps({"scripts": {"build": build}})}
        status = wait_for(client, tenant, deploy(client, tenant, files))
    finally:
        shutil.rmtree(outside)

    _failed_on_a_symlink(status, "/sandbox/tmp")
    assert client.get(f"/sites/{tenant.project_id}/{canary.name}").status_code == 404


@pytest.mark.parametrize(
    ("planted", "path", "link"),
    [
        # A previous attempt's build left the cache directory as a link: the cache restore writes there.
        ("ln -s {outside} .libra-cache", ".libra-cache/deps.tar.gz", "/sandbox/project/.libra-cache"),
        ("mkdir -p a && ln -s {outside} a/b", "a/b/c/file.txt", "/sandbox/project/a/b"),
        ("cd .. && mv project old && ln -s {outside} project", "file.txt", "/sandbox/project"),
    ],
    ids=["cache-directory", "intermediate-directory", "project-directory"],
)
def test_files_are_never_written_through_a_linked_directory(sandbox, data_dir, planted, path, link):
    outside = data_dir / "outside"
    outside.mkdir()
    code, out = sandbox.run(planted.format(outside=outside))
    assert code == 0, out

    with pytest.raises(ProviderError, match=f"{link} is a symbolic link") as raised:
        sandbox.provider.write_files(sandbox.id, [(path, b"from the store")])

    assert raised.value.code == "SANDBOX_SYMLINK"
    assert not raised.value.retryable
    assert list(outside.iterdir()) == []


def test_a_file_left_as_a_link_is_replaced_not_written_through(sandbox, data_dir):
    secret = data_dir / "service-secret.txt"
    code, out = sandbox.run(f"mkdir -p .libra-cache && ln -s {secret} .libra-cache/deps.tar.gz")
    assert code == 0, out

    sandbox.provider.write_files(sandbox.id, [(".libra-cache/deps.tar.gz", b"the cache")])

    assert secret.read_text() == "the service's own file\n"
    written = sandbox.host_dir() / ".libra-cache" / "deps.tar.gz"
    assert not written.is_symlink()
    assert written.read_bytes() == b"the cache"


def test_a_build_cannot_hard_link_a_file_it_sees_of_the_host(sandbox):
    """Hard links need no check on the host: the kernel refuses one across bubblewrap's mounts."""
    code, out = sandbox.run("ln /etc/passwd p; ln /usr/bin/env e; true")
    assert code == 0, out
    assert out.count("Invalid cross-device link") == 2, out
    assert not (sandbox.host_dir() / "p").exists()
    assert not (sandbox.host_dir() / "e").exists()


def test_links_inside_the_output_are_left_out(sandbox, data_dir):
    code, out = sandbox.run(
        f"mkdir -p dist/real && echo page > dist/index.html && echo asset > dist/real/a.js"
        f" && ln -s {data_dir} dist/linked-dir && ln -s {data_dir}/service-secret.txt dist/linked-file"
        f" && ln -s real dist/inner && ln -s index.html dist/inner-file && mkfifo dist/fifo"
    )
    assert code == 0, out

    assert dict(sandbox.provider.read_files(sandbox.id, "dist")) == {
        "index.html": b"page\n",
        "real/a.js": b"asset\n",
    }


# Without bubblewrap ---------------------------------------------------------------------------------


@pytest.fixture
def path_without_bwrap(tmp_path, monkeypatch) -> None:
    """A PATH holding the tools the sandbox needs but not bwrap: a machine without bubblewrap."""
    bin_dir = tmp_path / "bin-without-bwrap"
    bin_dir.mkdir()
    for tool in ("prlimit", "setpriv", "sh", "env", "node"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_without_bubblewrap_the_provider_warns_and_says_so(data_dir, path_without_bwrap, caplog, monkeypatch):
    with caplog.at_level(logging.WARNING, logger="libra_deploy.adapters.local_sandbox"):
        provider = _provider(data_dir, "auto")
    assert provider.isolation == "none"
    assert any("bubblewrap is not available" in r.getMessage() for r in caplog.records)
    # Still no secret reaches a build.
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("CANARY_SECRET_TOKEN", canary)
    code, out = Sandbox(provider).run("env")
    assert code == 0
    assert canary not in out


def test_requiring_bubblewrap_where_it_is_missing_stops_start_up(data_dir, path_without_bwrap):
    with pytest.raises(ConfigError) as raised:
        _provider(data_dir, "bubblewrap")
    assert raised.value.setting == "SANDBOX_ISOLATION"
    assert "bwrap is not installed" in str(raised.value)


def test_health_reports_the_isolation(settings, client):
    assert client.get("/health").get_json()["checks"]["isolation"] == "bubblewrap"
    with custom_app(settings, sandbox_isolation="none") as degraded:
        body = degraded.test_client().get("/health").get_json()
    assert body["checks"]["isolation"] == "none"


# The canaries, through the whole pipeline -------------------------------------------------------------

CANARY_BUILD = r"""
const fs = require('fs');
const path = require('path');
console.log('ENV ' + JSON.stringify(process.env));
const found = [];
function walk(dir, depth) {
  let entries;
  try { entries = fs.readdirSync(dir, { withFileTypes: true }); }
  catch (e) { console.log('UNREADABLE ' + dir + ' ' + e.code); return; }
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    if (depth === 0 && ['proc', 'sys', 'dev', 'usr'].includes(entry.name)) continue;
    if (entry.isDirectory()) { if (depth < 8) walk(full, depth + 1); continue; }
    let head = '';
    try { head = fs.readFileSync(full).subarray(0, 120).toString('utf8'); } catch (e) { head = e.code; }
    found.push(full);
    console.log('FILE ' + full + ' ' + JSON.stringify(head));
  }
}
walk('../../', 0);
fs.mkdirSync('dist', { recursive: true });
fs.writeFileSync('dist/index.html', '<pre>' + found.join('\n') + '</pre>');
// The site is served as built, unredacted: what the build saw of its environment, verbatim.
fs.writeFileSync('dist/env.json', JSON.stringify(process.env));
"""


@pytest.mark.slow
def test_a_build_finds_no_canary_in_its_environment_or_on_disk(
    client, tenant, worker, settings, runtime, monkeypatch
):
    token = f"canary{uuid.uuid4().hex}"
    monkeypatch.setenv("CANARY_API_TOKEN", token)
    secret_text = f"canary-file-{uuid.uuid4().hex}"
    # In the data directory, and beside the sandboxes (which ../../ of a sandbox's project reaches
    # when nothing isolates it).
    canaries = [
        settings.data_dir / f"{secret_text}.txt",
        settings.data_dir / "sandboxes" / f"{secret_text}.txt",
    ]
    for canary in canaries:
        canary.write_text(secret_text)
    try:
        files = {"package.json": json.dumps({"scripts": {"build": "node walk.js"}}), "walk.js": CANARY_BUILD}
        deployment_id = deploy(client, tenant, files)
        status = wait_for(client, tenant, deployment_id, timeout=180)
    finally:
        for canary in canaries:
            canary.unlink()

    assert status["status"] == "completed", status
    full_log = runtime.store.get(f"logs/{deployment_id}.log").decode()
    # The walk did run, over the sandbox's whole root.
    assert "ENV {" in full_log
    assert "/walk.js " in full_log
    site = client.get(f"/sites/{tenant.project_id}/").get_data(as_text=True)
    seen_env = client.get(f"/sites/{tenant.project_id}/env.json").get_json()
    # The log's copy of the environment is redacted, so the unredacted copy the build published
    # is what shows the variable never reached it (not merely that redaction masked it).
    assert "PATH" in seen_env
    assert "CANARY_API_TOKEN" not in seen_env
    assert "CANARY_API_TOKEN" not in full_log
    with runtime.sessions() as session:
        letters = [letter.message for letter in session.scalars(select(DeadLetter))]
    shown = [json.dumps(status), full_log, site, json.dumps(seen_env), json.dumps(letters, default=str)]
    for text in shown:
        assert token not in text
        assert secret_text not in text
    assert str(settings.data_dir) not in full_log
