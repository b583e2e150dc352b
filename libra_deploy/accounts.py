"""Organisations, users and projects: what operators create and what every request is scoped to."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from libra_deploy import domains, sources, templates
from libra_deploy.config import Settings
from libra_deploy.errors import Conflict, InvalidInput, NotFound
from libra_deploy.models import Organization, Project, User, is_plausible_id
from libra_deploy.registry import SANDBOX_PROVIDERS


def _name(value: str, what: str) -> str:
    value = value.strip()
    if not value or len(value) > 200 or any(ord(c) < 0x20 for c in value):
        raise InvalidInput(f"{what} must be 1 to 200 printable characters", details={"field": "name"})
    return value


def create_organization(session: Session, name: str) -> Organization:
    org = Organization(name=_name(name, "an organisation name"))
    session.add(org)
    session.flush()
    return org


def get_organization(session: Session, org_id: str) -> Organization:
    org = session.get(Organization, org_id) if is_plausible_id(org_id) else None
    if org is None:
        raise NotFound(f"organisation {org_id} does not exist", code="ORG_NOT_FOUND")
    return org


def create_user(session: Session, org_id: str, email: str) -> User:
    get_organization(session, org_id)
    email = email.strip().lower()
    local, _, host = email.partition("@")
    if not local or "." not in host or len(email) > 320 or any(c.isspace() for c in email):
        raise InvalidInput(f"{email!r} is not an email address", details={"field": "email"})
    if session.scalars(select(User.id).where(User.email == email)).first():
        raise Conflict(f"a user with email {email} exists already", code="USER_EXISTS")
    user = User(org_id=org_id, email=email)
    session.add(user)
    session.flush()
    return user


def create_project(
    session: Session,
    org_id: str,
    name: str,
    *,
    template: str | None = None,
    custom_domain: str | None = None,
    spa_fallback: bool = True,
    sandbox_provider: str | None = None,
    settings: Settings | None = None,
) -> Project:
    get_organization(session, org_id)
    if template is not None:
        templates.get(template)
    if sandbox_provider is not None and sandbox_provider not in SANDBOX_PROVIDERS:
        raise InvalidInput(
            f"unknown sandbox provider {sandbox_provider!r}; choose one of {', '.join(SANDBOX_PROVIDERS)}",
            code="UNKNOWN_SANDBOX_PROVIDER",
            details={"field": "sandboxProvider", "choices": list(SANDBOX_PROVIDERS)},
        )
    domain = domains.normalize(custom_domain, settings) if custom_domain else None
    if domain:
        domains.ensure_available(session, domain, project_id=None)
    project = Project(
        org_id=org_id,
        name=_name(name, "a project name"),
        template=template,
        custom_domain=domain,
        spa_fallback=spa_fallback,
        sandbox_provider=sandbox_provider,
    )
    session.add(project)
    try:
        session.flush()
    except IntegrityError:
        # The caller's transaction is rolled back as this error leaves it.
        raise domains.domain_taken(domain or "") from None
    return project


def get_project(session: Session, org_id: str, project_id: str) -> Project:
    """The project, if it belongs to the organisation. Another organisation's project is 404.

    Its source manifest is left unread (a big site's is megabytes of JSON, and its file count is a
    column of its own): reading it from the project returned raises. Only the sync step reads it,
    through the step's own snapshot.
    """
    options = (defer(Project.source_manifest, raiseload=True),)
    project = session.get(Project, project_id, options=options) if is_plausible_id(project_id) else None
    if project is None or project.org_id != org_id:
        raise NotFound(
            "The specified project does not exist or you do not have access to it", code="PROJECT_NOT_FOUND"
        )
    return project


#: The longest install or build command a project may set.
MAX_COMMAND_LENGTH = 1000
#: A Node.js version hint: "20", "20.x", "20.11", "20.11.1", "v22".
_NODE_VERSION = re.compile(r"v?\d{1,3}(\.(\d{1,4}|x)){0,2}")


def _command(field: str) -> Callable[[Any, Settings], str | None]:
    """An install or build command: one line of shell, run with ``sh -c`` in the sandbox.

    A shell string rather than an argument list, because that is what people type into Vercel,
    Netlify and Pages (``npm run build && cp -r extra dist/``); the sandbox, not the parsing of
    the command, is the security boundary. Empty or null clears it (the detected command runs).
    """

    def check(value: Any, settings: Settings) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            raise _invalid(field, "must be a string")
        value = value.strip()
        if len(value) > MAX_COMMAND_LENGTH:
            raise _invalid(field, f"must be at most {MAX_COMMAND_LENGTH} characters")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise _invalid(field, "must be one line without control characters (join commands with &&)")
        return value

    return check


def _directory(field: str) -> Callable[[Any, Settings], str | None]:
    """A directory of the source tree, relative, with the rules of source paths (no ``..``)."""

    def check(value: Any, settings: Settings) -> str | None:
        if value is None or (isinstance(value, str) and value.strip() in ("", ".", "./")):
            return None
        return sources.normalize_path(value, settings, field=field)

    return check


def _node_version(value: Any, settings: Settings) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or not _NODE_VERSION.fullmatch(value.strip()):
        raise _invalid("nodeVersion", "must be a Node.js version such as 20, 20.x or 20.11.1")
    return value.strip()


def _invalid(field: str, problem: str) -> InvalidInput:
    return InvalidInput(f"{field} {problem}", details={"field": field})


#: What PATCH /projects/<id> may change, by attribute, each with the check its value must pass.
PROJECT_SETTINGS: dict[str, Callable[[Any, Settings], Any]] = {
    "name": lambda value, settings: _name(str(value), "a project name"),
    "spa_fallback": lambda value, settings: bool(value),
    "install_command": _command("installCommand"),
    "build_command": _command("buildCommand"),
    "output_directory": _directory("outputDirectory"),
    "root_directory": _directory("rootDirectory"),
    "node_version": _node_version,
}


def update_project(
    session: Session, org_id: str, project_id: str, changes: Mapping[str, Any], *, settings: Settings
) -> Project:
    """Change the given settings of a project (others stay as they are).

    Every value is checked before any is applied: a request with one bad value changes nothing.
    """
    project = get_project(session, org_id, project_id)
    unknown = set(changes) - set(PROJECT_SETTINGS)
    if unknown:
        raise InvalidInput(f"these project settings cannot be changed: {', '.join(sorted(unknown))}")
    checked = {
        attribute: PROJECT_SETTINGS[attribute](value, settings) for attribute, value in changes.items()
    }
    for attribute, value in checked.items():
        setattr(project, attribute, value)
    session.flush()
    return project


def spa_fallback_enabled(session: Session, project_id: str) -> bool:
    """Whether the project's site falls back to index.html for deep links (read when serving)."""
    enabled = session.scalars(select(Project.spa_fallback).where(Project.id == project_id)).first()
    return bool(enabled)
