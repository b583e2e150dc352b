"""Build environment variables of a project: checked names, values encrypted at rest, never shown.

Values are encrypted under the keys of ENCRYPTION_KEY (:mod:`libra_deploy.secrets_at_rest`, which
webhook secrets share); in production ENCRYPTION_KEY is required as soon as a variable is stored or a
project that has some builds. A value is sealed with its project id and name: a ciphertext copied
onto another row (another project, another name) does not decrypt there.

The API returns names, versions and dates, never a value. Values reach the install and build
commands of the build step only (as Vercel and Cloudflare Pages pass them), never validate, sync,
deploy or cleanup, and the build step masks each value in every line it logs, in its stored log and
in its errors (:func:`libra_deploy.redact.masker`).

A deployment uses the variables as they are when its build starts (on Vercel and Pages a change
applies to the next build too): one deleted while the deployment waited in the queue is simply not
there. The names and versions it was built with are recorded on it (``buildVariables``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography.fernet import MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from libra_deploy import accounts, secrets_at_rest
from libra_deploy.config import Settings
from libra_deploy.errors import ConfigError, InvalidInput, NotFound, StepError
from libra_deploy.models import Project, ProjectVariable

#: POSIX: letters, digits and underscores, not starting with a digit.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NAME_LENGTH = 256
#: As on Cloudflare Pages.
MAX_VARIABLES = 100
#: Names and values together, as on Vercel: far below what one exec() may carry (ARG_MAX), which a
#: provider passing them on a command line (Daytona) needs too.
MAX_TOTAL_BYTES = 64 * 1024

#: Names the sandbox sets itself, or that change how the shell and the dynamic loader behave: the
#: sandbox's own tools (bubblewrap, prlimit) start with the build's environment, outside the sandbox.
RESERVED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "TMPDIR",
        "PWD",
        "OLDPWD",
        "SHELL",
        "USER",
        "LOGNAME",
        "HOSTNAME",
        "SHLVL",
        "IFS",
        "ENV",
        "BASH_ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        # glibc's list of variables it ignores in privileged programs (UNSECURE_ENVVARS).
        "GCONV_PATH",
        "GETCONF_DIR",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_TRACE",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TZDIR",
    }
)
RESERVED_PREFIXES = ("LD_", "GLIBC_TUNABLES", "MALLOC_")


def validate_name(raw: str) -> str:
    """The name of a build variable, or InvalidInput saying why it cannot be one."""

    def refuse(reason: str) -> InvalidInput:
        return InvalidInput(
            f"name: {reason}", code="INVALID_VARIABLE_NAME", details={"field": "name", "name": raw[:100]}
        )

    if len(raw) > MAX_NAME_LENGTH:
        raise refuse(f"a variable name has at most {MAX_NAME_LENGTH} characters")
    if not NAME.fullmatch(raw):
        raise refuse("a variable name holds letters, digits and '_' and does not start with a digit")
    if raw.upper() in RESERVED_NAMES or raw.upper().startswith(RESERVED_PREFIXES):
        raise refuse(f"{raw} is set by the sandbox or changes how it runs programs; choose another name")
    return raw


def _validate_value(value: str) -> str:
    if "\0" in value:
        # An environment cannot carry NUL: the value would be cut short there.
        raise InvalidInput("value: a variable's value cannot hold NUL characters", details={"field": "value"})
    return value


# Encryption ---------------------------------------------------------------------------------------


def _encrypt(fernet: MultiFernet, project_id: str, name: str, value: str) -> str:
    return secrets_at_rest.seal(fernet, value, {"project": project_id, "name": name})


def _decrypt(fernet: MultiFernet, variable: ProjectVariable) -> str:
    """The value, or ValueError when no key decrypts it or it was not stored for this variable."""
    return secrets_at_rest.unseal(
        fernet, variable.ciphertext, {"project": variable.project_id, "name": variable.name}
    )


# Use cases ----------------------------------------------------------------------------------------


def list_variables(session: Session, org_id: str, project_id: str) -> list[ProjectVariable]:
    project = accounts.get_project(session, org_id, project_id)
    return list(
        session.scalars(
            select(ProjectVariable)
            .where(ProjectVariable.project_id == project.id)
            .order_by(ProjectVariable.name)
        )
    )


def set_variable(
    session: Session, settings: Settings, org_id: str, project_id: str, name: str, value: str
) -> ProjectVariable:
    """Create or change a variable (its version goes up by one); the value is stored encrypted."""
    accounts.get_project(session, org_id, project_id)
    name = validate_name(name)
    value = _validate_value(value)
    fernet = secrets_at_rest.require_keyring(settings, "build variables")
    # The project's row lock serialises changes of its variables, so the limits hold under races.
    session.execute(select(Project.id).where(Project.id == project_id).with_for_update())
    variables = {
        v.name: v
        for v in session.scalars(select(ProjectVariable).where(ProjectVariable.project_id == project_id))
    }
    others = [v for n, v in variables.items() if n != name]
    if len(others) >= MAX_VARIABLES:
        raise InvalidInput(
            f"a project has at most {MAX_VARIABLES} build variables",
            code="TOO_MANY_VARIABLES",
            details={"field": "name", "limit": MAX_VARIABLES},
        )
    total = len(name.encode()) + len(value.encode()) + sum(_size(fernet, v) for v in others)
    if total > MAX_TOTAL_BYTES:
        raise InvalidInput(
            f"a project's build variables hold at most {MAX_TOTAL_BYTES // 1024} KiB, names and values "
            "together",
            code="VARIABLES_TOO_LARGE",
            details={"field": "value", "limit": MAX_TOTAL_BYTES},
        )
    variable = variables.get(name)
    if variable is None:
        variable = ProjectVariable(project_id=project_id, name=name, version=1)
        session.add(variable)
    else:
        variable.version += 1
    variable.ciphertext = _encrypt(fernet, project_id, name, value)
    session.flush()
    return variable


def _size(fernet: MultiFernet, variable: ProjectVariable) -> int:
    try:
        value = _decrypt(fernet, variable)
    except ValueError:
        # Unreadable with these keys: its ciphertext is longer than its value, so the limit still holds.
        return len(variable.name) + len(variable.ciphertext)
    return len(variable.name.encode()) + len(value.encode())


def delete_variable(session: Session, org_id: str, project_id: str, name: str) -> None:
    accounts.get_project(session, org_id, project_id)
    # Only a name set_variable could have stored is looked up: any other (a NUL byte, which the
    # database refuses in text) is the same 404 as a name the project does not have.
    plausible = len(name) <= MAX_NAME_LENGTH and NAME.fullmatch(name) is not None
    variable = session.get(ProjectVariable, (project_id, name)) if plausible else None
    if variable is None:
        raise NotFound(f"the project has no build variable {name[:100]}", code="VARIABLE_NOT_FOUND")
    session.delete(variable)
    session.flush()


@dataclass(frozen=True)
class BuildVariables:
    values: dict[str, str]
    #: {name: version}: what the deployment records, never the values.
    versions: dict[str, int]


def for_build(session: Session, settings: Settings, project_id: str) -> BuildVariables:
    """The project's variables, decrypted for its build; a StepError naming what cannot be read."""
    variables = list(
        session.scalars(
            select(ProjectVariable)
            .where(ProjectVariable.project_id == project_id)
            .order_by(ProjectVariable.name)
        )
    )
    if not variables:
        return BuildVariables({}, {})
    fernet = secrets_at_rest.keyring(settings)
    if fernet is None:
        raise StepError(secrets_at_rest.missing_key("build variables").message, code="ENCRYPTION_KEY_MISSING")
    values = {}
    for variable in variables:
        try:
            values[variable.name] = _decrypt(fernet, variable)
        except ValueError as exc:
            raise StepError(
                f"the build variable {variable.name} cannot be decrypted: {exc} (was ENCRYPTION_KEY "
                "changed without keeping the old key after the new one?)",
                code="VARIABLE_UNREADABLE",
            ) from None
    return BuildVariables(values, {v.name: v.version for v in variables})


def reencrypt(session: Session, settings: Settings) -> int:
    """Encrypt every variable again with the first key of ENCRYPTION_KEY; return how many changed.

    After a rotation (a new key first, the old one after it) this lets the old key be dropped.
    """
    fernet = secrets_at_rest.require_keyring(settings, "build variables")
    changed = 0
    for variable in session.scalars(select(ProjectVariable).with_for_update()):
        # Decrypting first proves the token belongs to this row before it is given a fresh one.
        value = _decrypt_or_refuse(fernet, variable)
        variable.ciphertext = _encrypt(fernet, variable.project_id, variable.name, value)
        changed += 1
    session.flush()
    return changed


def _decrypt_or_refuse(fernet: MultiFernet, variable: ProjectVariable) -> str:
    try:
        return _decrypt(fernet, variable)
    except ValueError as exc:
        raise ConfigError(
            "ENCRYPTION_KEY", f"cannot decrypt build variable {variable.name} of {variable.project_id}: {exc}"
        ) from None
