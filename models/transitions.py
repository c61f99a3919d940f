"""Where a transition's rules come from: the service in `orchestration` that runs them.

The model layer holds tables, schemas, queries and statements, and does not import the rules.
Yet the contract's entry points for a state change live here (`models.flow_runs.set_flow_run_state`,
`models.task_runs.set_task_run_state`, a create with a state). They hand the work to the
transition service, which the installed package names in its `flowruns.transitions` entry point
(`orchestration.service`): found once, on first use.
"""

import functools
import uuid
from importlib.metadata import entry_points
from typing import Any, Protocol

from sqlalchemy.orm import Session

from models import orm
from models.schemas.responses import OrchestrationResult

ENTRY_POINT_GROUP = "flowruns.transitions"


class TransitionResult(Protocol):
    result: OrchestrationResult | None


class TransitionService(Protocol):
    """What `orchestration.service` offers the model layer."""

    def set_flow_run_state(
        self, session: Session, flow_run_id: uuid.UUID, state: Any, force: bool = False,
        flow_policy: Any = None, orchestration_parameters: dict[str, Any] | None = None,
        client_version: str | None = None,
    ) -> TransitionResult: ...

    def set_new_flow_run_state(
        self, session: Session, row: dict[str, Any], state: Any, write_with_first_state: bool,
        orchestration_parameters: dict[str, Any] | None = None,
    ) -> OrchestrationResult: ...

    def set_task_run_state(
        self, session: Session, task_run_id: uuid.UUID, state: Any, force: bool = False,
        task_policy: Any = None, orchestration_parameters: dict[str, Any] | None = None,
    ) -> TransitionResult: ...

    def set_new_task_run_state(
        self, session: Session, task_run: orm.TaskRun, state: Any, orchestration_parameters: dict[str, Any] | None = None,
    ) -> OrchestrationResult: ...


@functools.cache
def transition_service() -> TransitionService:
    """The installed transition service (`pip install -e .` registers it)."""
    found = entry_points(group=ENTRY_POINT_GROUP, name="service")
    if not found:
        raise RuntimeError(
            f"no transition service is installed (entry point group {ENTRY_POINT_GROUP!r}): "
            "install flowruns (pip install -e .) so that orchestration.service is found"
        )
    service: TransitionService = next(iter(found)).load()
    return service
