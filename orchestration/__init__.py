"""The state-transition rule engine and its policies.

`models.flow_runs.set_flow_run_state` and `models.task_runs.set_task_run_state` run a policy (an
ordered list of rule classes) and then the global transforms around the write of one proposed
state; see `orchestration.rules` for a rule's life cycle and `orchestration.engine` for the order.
"""

from orchestration.global_policy import GlobalFlowPolicy
from orchestration.policies import CoreFlowPolicy, MarkLateRunsPolicy, MinimalFlowPolicy
from orchestration.task_policy import BackgroundTaskPolicy, CoreTaskPolicy, GlobalTaskPolicy, MinimalTaskPolicy

__all__ = [
    "BackgroundTaskPolicy",
    "CoreFlowPolicy",
    "CoreTaskPolicy",
    "GlobalFlowPolicy",
    "GlobalTaskPolicy",
    "MarkLateRunsPolicy",
    "MinimalFlowPolicy",
    "MinimalTaskPolicy",
]
