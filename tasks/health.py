"""`flowruns check`: is everything flowruns needs there and alive?

Five checks, each answering ok or not with a line of detail: the database answers, its schema is
at the newest migration, the broker answers, at least one worker answers a ping, and beat fired
within its interval (the late-runs marker, which beat fires every few seconds, noted a run in the
database recently: so beat fires and a worker runs what it sends). The command exits non-zero when any check it ran failed, so compose and
Kubernetes probes can use it.
"""

import datetime
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery

from models.settings import Settings

BEAT_CHECKED_TASK = "maintenance.mark_late_runs"
BEAT_GRACE_SECONDS = 10.0
"""Beat is alive when the marker ran within three of its intervals plus this."""
PROBE_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def check_database(app: Celery, settings: Settings) -> str:
    import sqlalchemy as sa

    from models.database import get_engine

    engine = get_engine(settings.database_url)
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))
    return engine.url.render_as_string(hide_password=True)


def check_schema(app: Celery, settings: Settings) -> str:
    from alembic.script import ScriptDirectory

    from models import migrations

    head = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
    current = migrations.current()
    if current != head:
        raise RuntimeError(f"at {current or 'base'}, not at {head}: run `flowruns db upgrade`")
    return f"at {head}"


def check_broker(app: Celery, settings: Settings) -> str:
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=PROBE_TIMEOUT_SECONDS)
        return str(connection.as_uri())


def check_worker(app: Celery, settings: Settings) -> str:
    """A worker that consumes our queue answers (workers of other apps on the broker answer too)."""
    answers = app.control.inspect(timeout=PROBE_TIMEOUT_SECONDS).active_queues() or {}
    ours = sorted(name for name, queues in answers.items()
                  if any(queue.get("name") == settings.task_queue for queue in queues or []))
    if not ours:
        raise RuntimeError(f"no worker consuming {settings.task_queue!r} answered within {PROBE_TIMEOUT_SECONDS:g} s")
    return ", ".join(ours)


def check_beat(app: Celery, settings: Settings) -> str:
    from models import maintenance_runs
    from models.database import unit_of_work

    with unit_of_work() as session:
        done = maintenance_runs.last_run(session, BEAT_CHECKED_TASK)
    if done is None:
        raise RuntimeError(f"{BEAT_CHECKED_TASK} never ran: is beat running (`celery -A tasks beat`)?")
    age = (datetime.datetime.now(datetime.timezone.utc) - done).total_seconds()
    allowed = 3 * settings.late_runs_interval_seconds + BEAT_GRACE_SECONDS
    if age > allowed:
        raise RuntimeError(f"{BEAT_CHECKED_TASK} last ran {age:.0f} s ago (more than {allowed:.0f} s)")
    return f"{BEAT_CHECKED_TASK} ran {age:.1f} s ago"


CHECKS: dict[str, Callable[[Celery, Settings], str]] = {
    "database": check_database,
    "schema": check_schema,
    "broker": check_broker,
    "worker": check_worker,
    "beat": check_beat,
}


def run_checks(app: Celery, settings: Settings, names: list[str]) -> list[CheckResult]:
    """The named checks in order; a check that raises failed, with the error as its detail."""
    results = []
    for name in names:
        try:
            results.append(CheckResult(name, True, CHECKS[name](app, settings)))
        except Exception as error:  # noqa: BLE001 - every failure is a line of the report
            results.append(CheckResult(name, False, f"{type(error).__name__}: {str(error).splitlines()[0]}"))
    return results
