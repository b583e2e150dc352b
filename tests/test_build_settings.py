"""A project's build settings: set with PATCH, shown in GET, each deployed for real in the local sandbox."""

from __future__ import annotations

import json

import pytest

from libra_deploy.builds import BuildSettings, plan_build
from tests.helpers import deploy_completed, new_project, wait_for

SETTINGS = ("installCommand", "buildCommand", "outputDirectory", "rootDirectory", "nodeVersion")


def _patch(client, tenant, project_id: str, body: dict):
    return client.patch(f"/projects/{project_id}", json=body, headers=tenant.headers)


def _settings(client, tenant, project_id: str) -> dict:
    project = client.get(f"/projects/{project_id}", headers=tenant.headers).get_json()
    return {key: project[key] for key in SETTINGS}


# Planning ----------------------------------------------------------------------------------------


def test_explicit_settings_win_over_the_detection():
    package = json.dumps(
        {
            "scripts": {"build": "vite build"},
            "devDependencies": {"vite": "8"},
            "libraDeploy": {"outputDir": "x"},
        }
    ).encode()
    detected = plan_build(package, ["package.json", "package-lock.json"])
    assert detected.build_command == ("npm", "run", "build")
    assert detected.install_command == ("npm", "ci", "--no-audit", "--no-fund")
    assert detected.output_dirs == ("x",)

    own = BuildSettings(
        install_command="npm ci --omit=optional",
        build_command="npm run build:site",
        output_directory="public/site",
        node_version="20",
    )
    plan = plan_build(package, ["package.json", "package-lock.json"], settings=own)
    assert plan.build_command == ("sh", "-c", "npm run build:site")
    assert plan.install_command == ("sh", "-c", "npm ci --omit=optional")
    assert plan.output_dirs == ("public/site",)
    assert plan.env["NODE_VERSION"] == "20"
    assert plan.package_manager is not None
    assert plan.package_manager.lockfile == "package-lock.json"


def test_a_build_command_builds_a_project_without_package_json():
    assert plan_build(None).is_static
    plan = plan_build(None, ["build.sh"], settings=BuildSettings(build_command="sh build.sh"))
    assert not plan.is_static
    assert plan.build_command == ("sh", "-c", "sh build.sh")
    assert plan.install_command is None
    assert plan.output_dirs == ("dist", "build", "out", "public")
    static = plan_build(None, ["public/index.html"], settings=BuildSettings(output_directory="public"))
    assert static.is_static
    assert static.static_dir == "public"


# The API -----------------------------------------------------------------------------------------


def test_build_settings_are_set_shown_and_cleared(client, runtime, tenant):
    project_id = new_project(runtime, tenant)
    assert _settings(client, tenant, project_id) == dict.fromkeys(SETTINGS)

    response = _patch(
        client,
        tenant,
        project_id,
        {
            "installCommand": "  pnpm install --frozen-lockfile ",
            "buildCommand": "pnpm run build && cp -r static dist/",
            "outputDirectory": "./dist/",
            "rootDirectory": "apps//web",
            "nodeVersion": "20.x",
        },
    )

    assert response.status_code == 200, response.get_json()
    expected = {
        "installCommand": "pnpm install --frozen-lockfile",
        "buildCommand": "pnpm run build && cp -r static dist/",
        "outputDirectory": "dist",
        "rootDirectory": "apps/web",
        "nodeVersion": "20.x",
    }
    assert {key: response.get_json()[key] for key in SETTINGS} == expected
    assert _settings(client, tenant, project_id) == expected
    # Null or "" gives the decision back to the detection; fields left out keep their values.
    cleared = _patch(
        client, tenant, project_id, {"buildCommand": None, "rootDirectory": "", "outputDirectory": "."}
    )
    assert cleared.status_code == 200
    assert _settings(client, tenant, project_id) == {
        **expected,
        "buildCommand": None,
        "rootDirectory": None,
        "outputDirectory": None,
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("buildCommand", "npm run build\nrm -rf /"),
        ("buildCommand", "x" * 1001),
        ("buildCommand", 12),
        ("installCommand", "npm ci\x00"),
        ("outputDirectory", "../../etc"),
        ("outputDirectory", "/var/www"),
        ("rootDirectory", "apps/../.."),
        ("rootDirectory", "apps\\web"),
        ("nodeVersion", "latest; rm -rf /"),
        ("nodeVersion", "banana"),
    ],
)
def test_an_invalid_setting_is_400_naming_the_field_and_changes_nothing(
    client, runtime, tenant, field, value
):
    project_id = new_project(runtime, tenant)
    _patch(client, tenant, project_id, {"buildCommand": "make site", "name": "before"})
    before = client.get(f"/projects/{project_id}", headers=tenant.headers).get_json()

    # A valid change beside the invalid one is not applied either.
    response = _patch(client, tenant, project_id, {"name": "after", "spaFallback": False, field: value})

    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["error"] == "VALIDATION_ERROR"
    assert field in json.dumps(body.get("details")) or field in body["message"]
    after = client.get(f"/projects/{project_id}", headers=tenant.headers).get_json()
    assert {k: v for k, v in after.items() if k != "updatedAt"} == {
        k: v for k, v in before.items() if k != "updatedAt"
    }


# Deployed for real in the local sandbox -----------------------------------------------------------


def _deploy_with(client, runtime, tenant, settings: dict, files: dict[str, str]) -> tuple[str, dict]:
    project_id = new_project(runtime, tenant)
    assert _patch(client, tenant, project_id, settings).status_code == 200
    deployment_id = deploy_completed(client, tenant, files, project_id=project_id)
    status = client.get(f"/deploy-status?id={deployment_id}", headers=tenant.headers).get_json()
    return project_id, status


@pytest.mark.slow
def test_a_custom_build_command_and_output_directory(client, runtime, worker, tenant):
    # No package.json: the build command alone makes it a built site; "site" is no usual output name.
    files = {
        "src/page.txt": "from the source",
        "make-site.sh": "mkdir -p site && cp src/page.txt site/index.html",
    }
    project_id, status = _deploy_with(
        client,
        runtime,
        tenant,
        {"buildCommand": "sh make-site.sh && echo made it", "outputDirectory": "site"},
        files,
    )

    assert client.get(f"/sites/{project_id}/").get_data(as_text=True) == "from the source"
    assert "Building: sh make-site.sh && echo made it" in status["logs"]
    assert "made it" in status["logs"]
    assert any(line.startswith("Build output: site/ with 1 files") for line in status["logs"])
    assert client.get(f"/sites/{project_id}/make-site.sh").status_code == 404


@pytest.mark.slow
def test_a_package_json_project_with_its_own_output_directory(client, runtime, worker, tenant):
    files = {
        "package.json": json.dumps({"scripts": {"build": "node build.js"}}),
        "build.js": "require('fs').mkdirSync('www/en', {recursive: true});"
        "require('fs').writeFileSync('www/en/index.html', 'built into www/en');"
        "require('fs').mkdirSync('dist', {recursive: true});"
        "require('fs').writeFileSync('dist/index.html', 'not this one');",
    }
    project_id, _status = _deploy_with(client, runtime, tenant, {"outputDirectory": "www/en"}, files)

    assert client.get(f"/sites/{project_id}/").get_data(as_text=True) == "built into www/en"


@pytest.mark.slow
def test_a_monorepo_package_builds_in_its_root_directory(client, runtime, worker, tenant):
    files = {
        "package.json": json.dumps({"name": "monorepo", "private": True, "workspaces": ["apps/*"]}),
        "shared/banner.txt": "shared banner",
        "apps/admin/package.json": json.dumps({"scripts": {"build": 'node -e "process.exit(3)"'}}),
        "apps/web/package.json": json.dumps({"name": "web", "scripts": {"build": "node build.js"}}),
        "apps/web/build.js": (
            "const fs = require('fs'); fs.mkdirSync('out', {recursive: true});"
            # The whole tree is in the sandbox: a package may use files of the repository around it.
            "const banner = fs.readFileSync('../../shared/banner.txt', 'utf8');"
            "const installed = fs.readFileSync('installed.txt', 'utf8').trim();"
            "const where = process.cwd().split('/').slice(-2).join('/');"
            "fs.writeFileSync('out/index.html', `${banner} | ${installed} | ${where}`);"
        ),
    }
    project_id, status = _deploy_with(
        client,
        runtime,
        tenant,
        {
            "rootDirectory": "apps/web",
            "installCommand": 'echo installed in $(basename "$(pwd)") > installed.txt',
            "outputDirectory": "out",
        },
        files,
    )

    assert client.get(f"/sites/{project_id}/").get_data(as_text=True) == (
        "shared banner | installed in web | apps/web"
    )
    assert "Root directory: apps/web/ (2 files)" in status["logs"]
    assert 'Installing dependencies: echo installed in $(basename "$(pwd)") > installed.txt' in status["logs"]
    assert any(line.startswith("Build output: out/ with 1 files") for line in status["logs"])


@pytest.mark.slow
def test_a_static_site_in_a_folder_and_an_empty_root_directory(client, runtime, worker, tenant):
    files = {"README.md": "not the site", "public/index.html": "the site", "public/about.html": "about"}
    project_id, status = _deploy_with(client, runtime, tenant, {"outputDirectory": "public"}, files)
    assert client.get(f"/sites/{project_id}/").get_data(as_text=True) == "the site"
    assert client.get(f"/sites/{project_id}/README.md").status_code == 404
    assert "No build script: the 2 source files in public/ are the site" in status["logs"]

    empty = new_project(runtime, tenant)
    _patch(client, tenant, empty, {"rootDirectory": "apps/missing"})
    deployment_id = client.post(
        "/deploy",
        json={"projectId": empty, "initFiles": [{"path": "index.html", "content": "x"}]},
        headers=tenant.headers,
    ).get_json()["deploymentId"]
    failed = wait_for(client, tenant, deployment_id)
    assert failed["status"] == "failed"
    assert failed["errorCode"] == "ROOT_DIRECTORY_EMPTY"


@pytest.mark.slow
def test_the_node_version_hint_reaches_the_build_and_the_log(client, runtime, worker, tenant):
    files = {
        "package.json": json.dumps({"scripts": {"build": "node build.js"}}),
        "build.js": "require('fs').mkdirSync('dist');"
        "require('fs').writeFileSync('dist/index.html', 'NODE_VERSION=' + process.env.NODE_VERSION);",
    }
    project_id, status = _deploy_with(client, runtime, tenant, {"nodeVersion": "16"}, files)

    assert client.get(f"/sites/{project_id}/").get_data(as_text=True) == "NODE_VERSION=16"
    # The local sandbox cannot switch Node.js: the log says which one ran instead.
    assert any(
        "NODE_VERSION=16 is passed to the build, but the local sandbox runs Node.js v" in line
        for line in status["logs"]
    )
