"""The six steps of a deployment, in order, and what each one means for progress and status.

Each step lives in its own module with two functions:

``execute(ctx) -> result``
    does the work (sandbox, build, upload...) without holding a database transaction;
``record(session, deployment, project, result)``
    writes what the work produced, inside the transaction that marks the step completed.

:mod:`libra_deploy.steps.runner` runs a step around those two functions and is the one place where
a step's state is committed.
"""

from __future__ import annotations

from sqlalchemy.orm import InstrumentedAttribute

from libra_deploy.models import Deployment, Project, ProjectStatus

STEPS = ("validate", "sync", "sandbox", "build", "deploy", "cleanup")

#: Steps that need a sandbox, and so a sandbox slot (held from the sandbox step to cleanup).
SLOT_STEPS = frozenset({"sandbox", "build", "deploy"})

#: Percent complete once the step has finished.
PROGRESS = {"validate": 10, "sync": 25, "sandbox": 45, "build": 70, "deploy": 90, "cleanup": 100}

#: ``projects.deployment_status`` while the step runs (the original service's mapping).
PROJECT_STATUS = {
    "validate": ProjectStatus.PREPARING,
    "sync": ProjectStatus.PREPARING,
    "sandbox": ProjectStatus.DEPLOYING,
    "build": ProjectStatus.DEPLOYING,
    "deploy": ProjectStatus.DEPLOYING,
    "cleanup": ProjectStatus.DEPLOYING,
}

#: Share of MAX_DEPLOYMENT_TIMEOUT each step may use. The build gets most of it; the others are
#: bounded so that one stuck provider call cannot eat the whole budget.
BUDGET = {"validate": 0.05, "sync": 0.2, "sandbox": 0.2, "build": 0.8, "deploy": 0.3, "cleanup": 0.1}

TITLES = {
    "validate": "Validating deployment parameters",
    "sync": "Syncing project files",
    "sandbox": "Creating sandbox environment",
    "build": "Building project",
    "deploy": "Publishing build output",
    "cleanup": "Cleaning up",
}

#: Columns that can hold megabytes of JSON: a 1,000-file site's request and manifests. Loaded in full,
#: they were fetched and parsed twice per step whatever the step: about 9 ms per step.
BULKY: tuple[InstrumentedAttribute[object], ...] = (
    Deployment.request,
    Deployment.history_messages,
    Deployment.source_manifest,
    Deployment.output_manifest,
    Project.source_manifest,
)

#: The bulky columns each step's ``execute`` reads from its snapshots: the request's file list and
#: the manifests of every file, megabytes of JSON for a big site. The runner loads these and no
#: other bulky column when it begins a step, and none of them when it records one (``record`` only
#: assigns them). Reading one that is not listed raises DetachedInstanceError, so a step that starts
#: reading one must list it here.
READS: dict[str, tuple[InstrumentedAttribute[object], ...]] = {
    "validate": (),
    "sync": (Deployment.request, Project.source_manifest),
    "sandbox": (Deployment.source_manifest,),
    "build": (Deployment.source_manifest,),
    "deploy": (Deployment.output_manifest,),
    "cleanup": (),
}


def _unread(reads: tuple[InstrumentedAttribute[object], ...]) -> tuple[InstrumentedAttribute[object], ...]:
    # Compared by name: == on two attributes builds an SQL expression, not a bool.
    wanted = {(column.class_, column.key) for column in reads}
    return tuple(column for column in BULKY if (column.class_, column.key) not in wanted)


#: The bulky columns each step's snapshots go without: BULKY less what the step READS.
UNREAD = {step: _unread(READS[step]) for step in STEPS}
