"""Another team's Celery app, with nothing of flowruns: its own task, Celery's default queue
(`celery -A tests.unrelated_app worker`, broker from UNRELATED_BROKER_URL)."""

import os

from celery import Celery

app = Celery(
    "unrelated",
    broker=os.environ.get("UNRELATED_BROKER_URL", "memory://"),
    backend=os.environ.get("UNRELATED_RESULT_BACKEND", "cache+memory://"),
)
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")


@app.task(name="unrelated.add")
def add(left: int, right: int) -> int:
    return left + right
