"""The worker app plus one task that does no database work: `bench worker`'s ceiling.

`celery -A flowruns_tools.ceiling_app worker` is flowruns' worker, with the same settings and the
same door, and one more task, `bench.no_database`, which takes a transition's kwargs and answers
with a result of a transition's shape without touching the database. What it sustains is what
Celery, Redis, the producer and the machine allow; flowruns' figures are given as a fraction of it.
"""

import uuid
from typing import Any

from tasks import app
from tasks.worker_app import GuardedTask

NO_DATABASE = "bench.no_database"


@app.task(name=NO_DATABASE, base=GuardedTask)
def no_database(flow_run_id: str, state: dict[str, Any]) -> dict[str, Any]:
    """An ACCEPT of the proposed state, made up: what a transition returns, minus the transition."""
    return {
        "status": "ACCEPT",
        "details": {"type": "accept_details"},
        "state": {"id": str(uuid.uuid4()), "type": state.get("type"), "name": state.get("type", "").title(),
                  "timestamp": "2026-01-01T00:00:00+00:00", "message": None, "data": None,
                  "state_details": {"flow_run_id": flow_run_id}},
    }


__all__ = ["NO_DATABASE", "app"]
