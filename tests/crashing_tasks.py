"""The worker app with one more task, which kills the pool process running it: the message that
takes its worker down every time (`celery -A tests.crashing_tasks worker`)."""

import os
import signal

from tasks import app

KILL_OWN_PROCESS = "tests.kill_own_process"


@app.task(name=KILL_OWN_PROCESS)
def kill_own_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["KILL_OWN_PROCESS", "app"]
