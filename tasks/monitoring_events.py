"""Events only flowruns knows of, sent beside Celery's own task events (Flower shows them too;
`flowruns metrics` counts them): a request answered from the inbox, a retry and its cause, what
the slot reconciler repaired, runs marked late. All are rare next to the requests themselves, so
each costs a publish only when it happens.
"""

import logging
from typing import Any

from tasks.worker_app import app

logger = logging.getLogger(__name__)

REPLAY = "flowruns-replay"
RETRY = "flowruns-retry"
REPAIR = "flowruns-repair"
LATE = "flowruns-late"


def emit(event_type: str, **fields: Any) -> None:
    """Send one event if the app sends events; never fails the task that sends it."""
    if not app.conf.worker_send_task_events:
        return
    try:
        with app.events.default_dispatcher() as dispatcher:
            dispatcher.send(event_type, **fields)
    except Exception:  # noqa: BLE001 - monitoring must not cost a request its result
        logger.warning("could not send the %s event", event_type, exc_info=True)
