"""The six step tasks. Their names are part of the wire format: the dead-letter queue replays by name."""

from __future__ import annotations

from tasks.app import app
from tasks.base import StepTask


@app.task(name="deploy.validate", base=StepTask, bind=True, step="validate")
def validate(self: StepTask, deployment_id: str) -> None:
    self.run_step(deployment_id)


@app.task(name="deploy.sync", base=StepTask, bind=True, step="sync")
def sync(self: StepTask, deployment_id: str) -> None:
    self.run_step(deployment_id)


@app.task(name="deploy.sandbox", base=StepTask, bind=True, step="sandbox")
def sandbox(self: StepTask, deployment_id: str) -> None:
    self.run_step(deployment_id)


@app.task(name="deploy.build", base=StepTask, bind=True, step="build")
def build(self: StepTask, deployment_id: str) -> None:
    self.run_step(deployment_id)


@app.task(name="deploy.deploy", base=StepTask, bind=True, step="deploy")
def deploy(self: StepTask, deployment_id: str) -> None:
    self.run_step(deployment_id)


@app.task(name="deploy.cleanup", base=StepTask, bind=True, step="cleanup")
def cleanup(self: StepTask, deployment_id: str) -> None:
    self.run_step(deployment_id)
