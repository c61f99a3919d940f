"""Logs an operator can feed to a log pipeline: `FLOWRUNS_LOG_FORMAT=json` writes one JSON object
per line, with the fields the code attaches (`extra=`) and, inside a task, its name and id.

Every flowruns request ends with one line (`flowruns.request`) that carries what an operator asks
first: the task, its id, the run, the proposed and resulting state, the outcome, how long it took
and how often it was retried. Celery's own lines keep their text in `message`.
"""

import datetime
import json
import logging
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger

from models.settings import get_settings

_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
"""What every log record has: anything else on a record was attached by the code (`extra=`)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO-8601), level, logger, message, the process, the
    current Celery task (name and id) if any, the fields attached with `extra=`, and the error."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
        }
        task = _current_task()
        if task is not None:
            document.setdefault("task", task[0])
            document.setdefault("task_id", task[1])
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["error"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def _current_task() -> tuple[str, str] | None:
    from celery import current_task

    task = current_task
    if task is None or not getattr(task, "request", None) or task.request.id is None:
        return None
    return str(task.name), str(task.request.id)


def use_json_formatter(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


@after_setup_logger.connect
@after_setup_task_logger.connect
def _json_when_asked(logger: logging.Logger, **_: Any) -> None:
    if get_settings().log_format == "json":
        use_json_formatter(logger)
