"""The import rules of DESIGN.md section 2, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _top(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def _violations(paths: list[Path], forbidden: set[str]) -> list[str]:
    found = []
    for path in paths:
        bad = _top(_imports(path)) & forbidden
        if bad:
            found.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}")
    return found


def test_the_core_imports_neither_flask_nor_celery_nor_tasks_nor_web():
    core = [p for p in _modules("libra_deploy") if "cli" not in p.relative_to(ROOT / "libra_deploy").parts]
    assert _violations(core, {"flask", "flask_smorest", "celery", "kombu", "tasks", "web", "werkzeug"}) == []


def test_adapters_import_no_other_adapter():
    found = []
    for path in _modules("libra_deploy/adapters"):
        for name in _imports(path):
            # Modules named _x hold SDK plumbing shared by adapters of one system (_s3.py).
            shared = name.startswith("libra_deploy.adapters._")
            if (
                name.startswith("libra_deploy.adapters.")
                and not shared
                and not name.startswith(f"libra_deploy.adapters.{path.stem}")
            ):
                found.append(f"{path.name} imports {name}")
            if name.split(".")[:2] in (
                ["libra_deploy", "models"],
                ["libra_deploy", "db"],
                ["libra_deploy", "steps"],
            ):
                found.append(f"{path.name} imports {name}")
    assert found == []


def test_tasks_never_import_web():
    assert _violations(_modules("tasks"), {"web", "flask", "flask_smorest"}) == []


def test_web_enqueues_only_through_tasks_pipeline():
    found = []
    for path in _modules("web"):
        for name in _imports(path):
            if name.split(".")[0] == "tasks" and not name.startswith("tasks.pipeline"):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
            if name.startswith("libra_deploy.adapters"):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    assert found == []


def test_celeryconfig_imports_only_os_kombu_and_the_standard_library():
    assert _top(_imports(ROOT / "celeryconfig.py")) <= {"os", "kombu", "pathlib"}


@pytest.mark.parametrize("step", ["validate", "sync", "sandbox", "build", "deploy", "cleanup"])
def test_every_step_has_its_module_and_its_task(step):
    module = (ROOT / "libra_deploy" / "steps" / f"{step}.py").read_text()
    assert "def execute(" in module
    assert "def record(" in module
    assert f'name="deploy.{step}"' in (ROOT / "tasks" / "steps.py").read_text()
