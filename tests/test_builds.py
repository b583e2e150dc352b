"""Build planning: framework detection, the package manager from the lockfile, output directories."""

from __future__ import annotations

import json

import pytest

from libra_deploy.builds import plan_build
from libra_deploy.errors import BuildFailed


def _package(deps: dict[str, str] | None = None, dev: dict[str, str] | None = None, **extra: object) -> bytes:
    body = {
        "name": "site",
        "scripts": {"build": "x"},
        "dependencies": deps or {},
        "devDependencies": dev or {},
    }
    return json.dumps({**body, **extra}).encode()


def test_no_package_json_or_no_build_script_is_a_static_site():
    assert plan_build(None).is_static
    assert plan_build(json.dumps({"scripts": {"start": "x"}}).encode()).is_static


@pytest.mark.parametrize(
    ("deps", "dev", "framework", "first_output"),
    [
        ({"react": "19"}, {"vite": "8"}, "vite", "dist"),
        ({"vue": "3"}, {"vite": "8"}, "vue", "dist"),
        ({}, {"vite": "8"}, "vite", "dist"),
        ({"react": "18", "react-scripts": "5"}, {}, "react", "build"),
        ({"vue": "3"}, {"@vue/cli-service": "5"}, "vue", "dist"),
        ({"astro": "5"}, {}, "astro", "dist"),
        ({}, {"@sveltejs/kit": "2", "@sveltejs/adapter-static": "3"}, "sveltekit", "build"),
        ({"left-pad": "1"}, {}, "node", "dist"),
    ],
)
def test_frameworks_are_detected_from_the_dependencies(deps, dev, framework, first_output):
    plan = plan_build(_package(deps, dev), ["package.json"])
    assert plan.framework == framework
    assert plan.output_dirs[0] == first_output
    assert set(plan.output_dirs) >= {"dist", "build", "out", "public"}


def test_nextjs_needs_a_static_export():
    files = {"next.config.mjs": b"export default { output: 'export', images: { unoptimized: true } }"}
    plan = plan_build(_package({"next": "15", "react": "19"}), [*files, "package.json"], files.__getitem__)
    assert (plan.framework, plan.output_dirs[0]) == ("nextjs", "out")
    assert plan.env["NEXT_TELEMETRY_DISABLED"] == "1"

    server = {"next.config.js": b"module.exports = { reactStrictMode: true }"}
    with pytest.raises(BuildFailed, match="output: 'export'") as raised:
        plan_build(_package({"next": "15"}), [*server], server.__getitem__)
    assert raised.value.code == "UNSUPPORTED_FRAMEWORK"
    with pytest.raises(BuildFailed):
        plan_build(_package({"next": "15"}), ["package.json"])


def test_sveltekit_needs_the_static_adapter():
    with pytest.raises(BuildFailed, match="adapter-static"):
        plan_build(_package({}, {"@sveltejs/kit": "2", "@sveltejs/adapter-auto": "3"}))


@pytest.mark.parametrize(
    ("files", "extra", "name", "install", "build"),
    [
        (["package-lock.json"], {}, "npm", ("npm", "ci", "--no-audit", "--no-fund"), ("npm", "run", "build")),
        (
            ["npm-shrinkwrap.json"],
            {},
            "npm",
            ("npm", "ci", "--no-audit", "--no-fund"),
            ("npm", "run", "build"),
        ),
        ([], {}, "npm", ("npm", "install", "--no-audit", "--no-fund"), ("npm", "run", "build")),
        (
            ["pnpm-lock.yaml"],
            {},
            "pnpm",
            ("corepack", "pnpm", "install", "--frozen-lockfile"),
            ("corepack", "pnpm", "run", "build"),
        ),
        (
            ["yarn.lock"],
            {},
            "yarn",
            ("corepack", "yarn", "install", "--frozen-lockfile"),
            ("corepack", "yarn", "run", "build"),
        ),
        (
            ["yarn.lock", ".yarnrc.yml"],
            {},
            "yarn",
            ("corepack", "yarn", "install", "--immutable"),
            ("corepack", "yarn", "run", "build"),
        ),
        (["bun.lockb"], {}, "bun", ("bun", "install", "--frozen-lockfile"), ("bun", "run", "build")),
        (
            ["bun.lock", "package-lock.json"],
            {},
            "bun",
            ("bun", "install", "--frozen-lockfile"),
            ("bun", "run", "build"),
        ),
        (
            [],
            {"packageManager": "pnpm@9.12.0"},
            "pnpm",
            ("corepack", "pnpm", "install"),
            ("corepack", "pnpm", "run", "build"),
        ),
    ],
)
def test_the_package_manager_comes_from_the_lockfile(files, extra, name, install, build):
    plan = plan_build(_package({"react": "19"}, {"vite": "8"}, **extra), ["package.json", *files])
    assert plan.package_manager is not None
    assert plan.package_manager.name == name
    assert plan.package_manager.install == install
    assert plan.build_command == build
    assert plan.package_manager.lockfile == (files[0] if files else None)


def test_nothing_to_install_without_dependencies_and_output_dir_wins():
    plan = plan_build(
        json.dumps({"scripts": {"build": "node b.js"}, "libraDeploy": {"outputDir": "./site/"}}).encode()
    )
    assert plan.install is False
    assert plan.output_dirs == ("site",)
    with pytest.raises(BuildFailed, match="outputDir"):
        plan_build(json.dumps({"scripts": {"build": "x"}, "libraDeploy": {"outputDir": "../etc"}}).encode())
