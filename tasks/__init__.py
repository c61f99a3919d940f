"""The Celery side of flowruns: `celery -A tasks worker|beat|flower`.

`tasks.app` is the worker's Celery instance with every task registered. It is built on first use,
not on import: a producer that imports `tasks.producer` gets neither the worker's app nor its
process-wide effects (the JSON codec registered with kombu, signal handlers), which would reach the
producer's own Celery apps too. The instance lives in `tasks.worker_app`.
"""

import importlib
from typing import Any

TASK_MODULES = (
    "deployments",
    "flow_run_states",
    "flow_runs",
    "flows",
    "maintenance",
    "task_runs",
    "work_pools",
    "work_queues",
)


def register_tasks() -> None:
    """Import every task module (each registers its tasks with the worker's app)."""
    for name in TASK_MODULES:
        importlib.import_module(f"tasks.{name}")


def __getattr__(name: str) -> Any:
    if name == "app":  # what `celery -A tasks` looks up
        from tasks.worker_app import app

        register_tasks()
        globals()["app"] = app
        return app
    if name in TASK_MODULES:
        return importlib.import_module(f"tasks.{name}")
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")


__all__ = ["app", "register_tasks", *TASK_MODULES]
