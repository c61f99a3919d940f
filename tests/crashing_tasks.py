"""The worker app with one more task, which kills the pool process running it: the message that
takes its worker down every time (`celery -A tests.crashing_tasks worker`)."""

import os
import signal
import time

from celery.exceptions import SoftTimeLimitExceeded

from tasks import app

KILL_OWN_PROCESS = "tests.kill_own_process"


@app.task(name=KILL_OWN_PROCESS)
def kill_own_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)



OVERRUN_HARD_LIMIT = "tests.overrun_hard_time_limit"


@app.task(name=OVERRUN_HARD_LIMIT)
def overrun_hard_time_limit(seconds: float) -> None:
    """Sleep through the soft time limit (as native code would) until the hard one kills the process."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except SoftTimeLimitExceeded:
            continue


__all__ = ["KILL_OWN_PROCESS", "OVERRUN_HARD_LIMIT", "app"]
