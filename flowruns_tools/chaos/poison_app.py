"""The worker app plus two tasks that take their worker down every time they run: the poison
messages of `flowruns chaos --scenario poison-message`.

`chaos.kill_pool_process` kills the pool process running it (flowruns counts the loss against the
message and parks it after `FLOWRUNS_MAX_WORKER_LOSSES`, on any broker); `chaos.kill_worker` kills
the worker's main process (only the broker can count that: RabbitMQ's delivery limit parks it in
the dead-letter queue).
"""

import os
import signal

from tasks import app
from tasks.worker_app import GuardedTask

KILL_POOL_PROCESS = "chaos.kill_pool_process"
KILL_WORKER = "chaos.kill_worker"


@app.task(name=KILL_POOL_PROCESS, base=GuardedTask)
def kill_pool_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name=KILL_WORKER, base=GuardedTask)
def kill_worker() -> None:
    os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["KILL_POOL_PROCESS", "KILL_WORKER", "app"]
