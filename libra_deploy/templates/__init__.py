"""Starter templates shipped with the service: a project that names one starts from its files.

Each template is a directory beside this module, holding exactly the files a project gets. The sync
step lays a template's files under a project's own files on the project's first deployment; from
then on the project's stored tree (which began as the template) is the base, so a file the user
deleted from a templated project stays deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from libra_deploy.errors import InvalidInput


@dataclass(frozen=True)
class Template:
    id: str
    title: str
    description: str
    framework: str


TEMPLATES = {
    t.id: t
    for t in (
        Template("static", "Static site", "An HTML page, a stylesheet and a 404 page; no build.", "static"),
        Template(
            "vite-react",
            "Vite + React",
            "A React app built by Vite, with a lockfile so installs are reproducible and cached.",
            "vite",
        ),
    )
}


def get(template_id: str) -> Template:
    """The template named ``template_id``, or InvalidInput naming the ones there are."""
    try:
        return TEMPLATES[template_id]
    except KeyError:
        raise InvalidInput(
            f"unknown template {template_id!r}; choose one of {', '.join(sorted(TEMPLATES))}",
            code="UNKNOWN_TEMPLATE",
            details={"field": "template", "choices": sorted(TEMPLATES)},
        ) from None


def files(template_id: str) -> dict[str, bytes]:
    """The template's files by relative path, in path order."""
    get(template_id)
    found: dict[str, bytes] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            path = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, path + "/")
            elif child.name != "__init__.py" and not child.name.endswith((".pyc", ".pyo")):
                found[path] = child.read_bytes()

    walk(resources.files(__name__).joinpath(template_id), "")
    return dict(sorted(found.items()))
