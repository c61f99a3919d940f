"""The Celery side of flowruns: `celery -A tasks worker|beat|flower`.

`tasks.app` names the Celery instance here (the module of the same name is `sys.modules["tasks.app"]`);
importing this package registers every task.
"""

from tasks.app import app

from tasks import (  # noqa: E402  (registration)
    deployments,
    flow_run_states,
    flow_runs,
    flows,
    maintenance,
    task_runs,
    work_pools,
    work_queues,
)

__all__ = [
    "app",
    "deployments",
    "flow_run_states",
    "flow_runs",
    "flows",
    "maintenance",
    "task_runs",
    "work_pools",
    "work_queues",
]
