"""The tables (SQLAlchemy 2 typed declarative models)."""

import datetime
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from models.schemas.core import (
    ConcurrencyOptions,
    CreatedBy,
    FlowRunPolicy,
    TaskInputs,
    TaskRunPolicy,
)
from models.schemas.states import TERMINAL_STATES, StateDetails, StateType
from models.types import JSON, Pydantic, Timestamp, now_utc, uuid7

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s__%(column_0_N_name)s",
    "uq": "uq_%(table_name)s__%(column_0_N_name)s",
    "ck": "ck_%(table_name)s__%(constraint_name)s",
    "fk": "fk_%(table_name)s__%(column_0_name)s__%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

state_type_enum = sa.Enum(
    StateType, name="state_type", values_callable=lambda e: [m.value for m in e], validate_strings=True
)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class BaseColumns:
    """`id`, `created` and `updated` on every table."""

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    created: Mapped[datetime.datetime] = mapped_column(Timestamp, nullable=False, default=now_utc)
    updated: Mapped[datetime.datetime] = mapped_column(
        Timestamp, nullable=False, default=now_utc, onupdate=now_utc, index=True
    )


class Flow(BaseColumns, Base):
    __tablename__ = "flow"

    name: Mapped[str] = mapped_column(sa.String, nullable=False, unique=True)
    tags: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (sa.Index("ix_flow__created", "created"),)


class WorkPool(BaseColumns, Base):
    __tablename__ = "work_pool"

    name: Mapped[str] = mapped_column(sa.String, nullable=False, unique=True)
    description: Mapped[str | None] = mapped_column(sa.String)
    type: Mapped[str] = mapped_column(sa.String, nullable=False, index=True)
    base_job_template: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    is_paused: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    default_queue_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid,
        sa.ForeignKey("work_queue.id", ondelete="RESTRICT", use_alter=True, name="fk_work_pool__default_queue_id__work_queue"),
    )
    concurrency_limit: Mapped[int | None] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String, nullable=False, default="NOT_READY")


class WorkQueue(BaseColumns, Base):
    __tablename__ = "work_queue"

    name: Mapped[str] = mapped_column(sa.String, nullable=False)
    description: Mapped[str] = mapped_column(sa.String, nullable=False, default="")
    is_paused: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    concurrency_limit: Mapped[int | None] = mapped_column(sa.Integer)
    priority: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=1)
    last_polled: Mapped[datetime.datetime | None] = mapped_column(Timestamp)
    status: Mapped[str] = mapped_column(sa.String, nullable=False, default="NOT_READY")
    work_pool_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("work_pool.id", ondelete="CASCADE"), nullable=False, index=True
    )

    work_pool: Mapped[WorkPool] = relationship(lazy="joined", foreign_keys=[work_pool_id])

    __table_args__ = (
        sa.UniqueConstraint("work_pool_id", "name"),
        sa.Index("ix_work_queue__work_pool_id_priority", "work_pool_id", "priority"),
    )


class ConcurrencyLimit(BaseColumns, Base):
    """A slot pool; a deployment's is named `deployment:<id>`."""

    __tablename__ = "concurrency_limit_v2"

    active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
    name: Mapped[str] = mapped_column(sa.String, nullable=False, unique=True)
    limit: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    active_slots: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    denied_slots: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    slot_decay_per_second: Mapped[float] = mapped_column(sa.Float, nullable=False, default=0.0)
    avg_slot_occupancy_seconds: Mapped[float] = mapped_column(sa.Float, nullable=False, default=2.0)
    # Not indexed, unlike every other table's: each slot taken or given back updates it, and an
    # index on it would stop PostgreSQL from updating the row in place (HOT; migration 0006).
    updated: Mapped[datetime.datetime] = mapped_column(Timestamp, nullable=False, default=now_utc, onupdate=now_utc)

    __table_args__ = (sa.CheckConstraint("active_slots >= 0", name="active_slots_not_negative"),)


class SlotHolding(Base):
    """One run holding one slot of one limit: the record that makes release exact.

    `id` is the lease id stamped on the run's state details. There is deliberately no
    foreign key to the run: a holding outlives a run deleted behind our back (a cascade
    from its flow), and cleanup or the reconciler then releases it.
    """

    __tablename__ = "concurrency_slot_holding"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    concurrency_limit_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("concurrency_limit_v2.id", ondelete="CASCADE"), nullable=False
    )
    flow_run_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, nullable=False, index=True)
    acquired_at: Mapped[datetime.datetime] = mapped_column(Timestamp, nullable=False, default=now_utc)

    __table_args__ = (sa.UniqueConstraint("concurrency_limit_id", "flow_run_id"),)


class Deployment(BaseColumns, Base):
    __tablename__ = "deployment"

    name: Mapped[str] = mapped_column(sa.String, nullable=False)
    version: Mapped[str | None] = mapped_column(sa.String)
    description: Mapped[str | None] = mapped_column(sa.Text)
    flow_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("flow.id", ondelete="CASCADE"), nullable=False, index=True
    )
    paused: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False, index=True)
    status: Mapped[str] = mapped_column(sa.String, nullable=False, default="NOT_READY")
    work_queue_name: Mapped[str | None] = mapped_column(sa.String, index=True)
    work_queue_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid, sa.ForeignKey("work_queue.id", ondelete="SET NULL"), index=True
    )
    concurrency_limit: Mapped[int | None] = mapped_column(sa.Integer)
    concurrency_limit_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid, sa.ForeignKey("concurrency_limit_v2.id", ondelete="SET NULL")
    )
    concurrency_options: Mapped[ConcurrencyOptions | None] = mapped_column(Pydantic(ConcurrencyOptions))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    job_variables: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    tags: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    path: Mapped[str | None] = mapped_column(sa.String)
    entrypoint: Mapped[str | None] = mapped_column(sa.String)
    enforce_parameter_schema: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
    infrastructure_document_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    created_by: Mapped[CreatedBy | None] = mapped_column(Pydantic(CreatedBy))

    global_concurrency_limit: Mapped[ConcurrencyLimit | None] = relationship(lazy="joined")
    work_queue: Mapped[WorkQueue | None] = relationship(lazy="joined")
    flow: Mapped[Flow] = relationship(lazy="select")

    __table_args__ = (
        sa.UniqueConstraint("flow_id", "name"),
        sa.Index("ix_deployment__created", "created"),
        sa.Index("ix_deployment__name", "name"),
    )

    @property
    def work_pool_name(self) -> str | None:
        return self.work_queue.work_pool.name if self.work_queue is not None else None


class RunColumns(BaseColumns):
    """The bookkeeping columns shared by flow runs and task runs."""

    name: Mapped[str] = mapped_column(sa.String, nullable=False)
    state_type: Mapped[StateType | None] = mapped_column(state_type_enum, index=True)
    state_name: Mapped[str | None] = mapped_column(sa.String, index=True)
    state_timestamp: Mapped[datetime.datetime | None] = mapped_column(Timestamp, index=True)
    run_count: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    expected_start_time: Mapped[datetime.datetime | None] = mapped_column(Timestamp)
    next_scheduled_start_time: Mapped[datetime.datetime | None] = mapped_column(Timestamp)
    start_time: Mapped[datetime.datetime | None] = mapped_column(Timestamp, index=True)
    end_time: Mapped[datetime.datetime | None] = mapped_column(Timestamp)
    total_run_time: Mapped[datetime.timedelta] = mapped_column(
        sa.Interval, nullable=False, default=datetime.timedelta(0)
    )

    @property
    def estimated_run_time(self) -> datetime.timedelta:
        """Run time so far: a RUNNING run's clock includes its time in the current state."""
        if self.state_type == StateType.RUNNING and self.state_timestamp is not None:
            return self.total_run_time + (now_utc() - self.state_timestamp)
        return self.total_run_time

    @property
    def estimated_start_time_delta(self) -> datetime.timedelta:
        """How late the run started, or is, against its expected start time."""
        if self.expected_start_time is None:
            return datetime.timedelta(0)
        if self.start_time is not None:
            return max(self.start_time - self.expected_start_time, datetime.timedelta(0))
        now = now_utc()
        if self.expected_start_time < now and self.state_type not in TERMINAL_STATES:
            return now - self.expected_start_time
        return datetime.timedelta(0)


class StateColumns:
    """The columns shared by flow-run and task-run states."""

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid7)
    created: Mapped[datetime.datetime] = mapped_column(Timestamp, nullable=False, default=now_utc)
    updated: Mapped[datetime.datetime] = mapped_column(
        Timestamp, nullable=False, default=now_utc, onupdate=now_utc
    )
    type: Mapped[StateType] = mapped_column(state_type_enum, nullable=False, index=True)
    timestamp: Mapped[datetime.datetime] = mapped_column(Timestamp, nullable=False, default=now_utc)
    name: Mapped[str] = mapped_column(sa.String, nullable=False, index=True)
    message: Mapped[str | None] = mapped_column(sa.Text)
    state_details: Mapped[StateDetails] = mapped_column(
        Pydantic(StateDetails), nullable=False, default=StateDetails
    )
    data: Mapped[Any | None] = mapped_column(JSON)


class FlowRunState(StateColumns, Base):
    __tablename__ = "flow_run_state"

    flow_run_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("flow_run.id", ondelete="CASCADE"), nullable=False
    )
    transition_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)

    __table_args__ = (
        sa.Index(
            "uq_flow_run_state__flow_run_id_timestamp_desc",
            "flow_run_id",
            sa.desc("timestamp"),
            unique=True,
        ),
        sa.Index(
            "uq_flow_run_state__flow_run_id_transition_id",
            "flow_run_id",
            "transition_id",
            unique=True,
            postgresql_where=sa.text("transition_id IS NOT NULL"),
            sqlite_where=sa.text("transition_id IS NOT NULL"),
        ),
    )


class TaskRunState(StateColumns, Base):
    __tablename__ = "task_run_state"

    task_run_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("task_run.id", ondelete="CASCADE"), nullable=False
    )

    __table_args__ = (
        sa.Index(
            "uq_task_run_state__task_run_id_timestamp_desc",
            "task_run_id",
            sa.desc("timestamp"),
            unique=True,
        ),
    )


class TaskRunStateCache(BaseColumns, Base):
    """A COMPLETED task-run state remembered under its cache key (newest entry wins).

    Looked up by `cache_key_digest` (sha256 hex of the key), never by the key itself: a key may
    be thousands of bytes, more than a PostgreSQL btree entry can hold. The key is kept to
    compare against. No foreign key to the state, as Prefect: an entry whose state is gone is
    a miss.
    """

    __tablename__ = "task_run_state_cache"

    cache_key: Mapped[str] = mapped_column(sa.String, nullable=False)
    cache_key_digest: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    cache_expiration: Mapped[datetime.datetime | None] = mapped_column(Timestamp)
    task_run_state_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, nullable=False)

    __table_args__ = (
        sa.Index("ix_task_run_state_cache__cache_key_digest_created_desc", "cache_key_digest", sa.desc("created")),
    )


class FlowRun(RunColumns, Base):
    __tablename__ = "flow_run"

    flow_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("flow.id", ondelete="CASCADE"), nullable=False, index=True
    )
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)
    work_queue_name: Mapped[str | None] = mapped_column(sa.String, index=True)
    flow_version: Mapped[str | None] = mapped_column(sa.String, index=True)
    deployment_version: Mapped[str | None] = mapped_column(sa.String, index=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    empirical_policy: Mapped[FlowRunPolicy] = mapped_column(
        Pydantic(FlowRunPolicy), nullable=False, default=FlowRunPolicy
    )
    tags: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_by: Mapped[CreatedBy | None] = mapped_column(Pydantic(CreatedBy))
    infrastructure_pid: Mapped[str | None] = mapped_column(sa.String)
    job_variables: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=dict)
    infrastructure_document_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)
    parent_task_run_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid,
        sa.ForeignKey("task_run.id", ondelete="SET NULL", use_alter=True, name="fk_flow_run__parent_task_run_id__task_run"),
        index=True,
    )
    auto_scheduled: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    state_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid,
        sa.ForeignKey("flow_run_state.id", ondelete="SET NULL", use_alter=True, name="fk_flow_run__state_id__flow_run_state"),
        index=True,
    )
    work_queue_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid, sa.ForeignKey("work_queue.id", ondelete="SET NULL"), index=True
    )

    state: Mapped[FlowRunState | None] = relationship(
        lazy="joined", foreign_keys=[state_id], post_update=False
    )
    work_queue: Mapped[WorkQueue | None] = relationship(lazy="joined", foreign_keys=[work_queue_id])
    flow: Mapped[Flow] = relationship(lazy="select")
    deployment: Mapped[Deployment | None] = relationship(
        primaryjoin="foreign(FlowRun.deployment_id) == Deployment.id", lazy="select", viewonly=True
    )
    parent_task_run: Mapped["TaskRun | None"] = relationship(
        foreign_keys=[parent_task_run_id], lazy="select", viewonly=True
    )

    __table_args__ = (
        sa.Index(
            "uq_flow_run__flow_id_idempotency_key", "flow_id", "idempotency_key", unique=True
        ),
        # Sort indexes end in `id`, the tie-breaker every sort adds, so a page is one index scan.
        sa.Index(
            "ix_flow_run__coalesce_start_expected_start_id",
            sa.func.coalesce(sa.text("start_time"), sa.text("expected_start_time")),
            "id",
        ),
        sa.Index("ix_flow_run__expected_start_time_desc_id_desc", sa.desc("expected_start_time"), sa.desc("id")),
        sa.Index("ix_flow_run__next_scheduled_start_time_id", "next_scheduled_start_time", "id"),
        sa.Index("ix_flow_run__end_time_desc_id_desc", sa.desc("end_time"), sa.desc("id")),
        sa.Index("ix_flow_run__name_id", "name", "id"),
        sa.Index("ix_flow_run__idempotency_key", "idempotency_key"),
        sa.Index(
            "ix_flow_run__created_by_id",
            sa.text("(created_by ->> 'id')"),
            postgresql_where=sa.text("created_by IS NOT NULL"),
        ).ddl_if(dialect="postgresql"),
        sa.Index(
            "ix_flow_run__created_by_type",
            sa.text("(created_by ->> 'type')"),
            postgresql_where=sa.text("created_by IS NOT NULL"),
        ).ddl_if(dialect="postgresql"),
        sa.Index(
            "ix_flow_run__name_trgm", "name", postgresql_using="gin", postgresql_ops={"name": "gin_trgm_ops"}
        ).ddl_if(dialect="postgresql"),
        sa.Index(
            "ix_flow_run__scheduler_deployment_id_next_scheduled",
            "deployment_id",
            "auto_scheduled",
            "next_scheduled_start_time",
            postgresql_where=sa.text("state_type = 'SCHEDULED'"),
            sqlite_where=sa.text("state_type = 'SCHEDULED'"),
        ),
        sa.Index("ix_flow_run__tags", "tags", postgresql_using="gin").ddl_if(dialect="postgresql"),
    )

    def set_state(self, state: FlowRunState | None) -> None:
        """Make `state` the current state: attach it to this run and point at it."""
        if state is not None:
            state.flow_run_id = self.id
        self.state = state


class TaskRun(RunColumns, Base):
    __tablename__ = "task_run"

    flow_run_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid, sa.ForeignKey("flow_run.id", ondelete="CASCADE"), index=True
    )
    task_key: Mapped[str] = mapped_column(sa.String, nullable=False)
    dynamic_key: Mapped[str] = mapped_column(sa.String, nullable=False)
    cache_key: Mapped[str | None] = mapped_column(sa.String)
    cache_expiration: Mapped[datetime.datetime | None] = mapped_column(Timestamp)
    task_version: Mapped[str | None] = mapped_column(sa.String)
    flow_run_run_count: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    empirical_policy: Mapped[TaskRunPolicy] = mapped_column(
        Pydantic(TaskRunPolicy), nullable=False, default=TaskRunPolicy
    )
    task_inputs: Mapped[TaskInputs] = mapped_column(Pydantic(TaskInputs), nullable=False, default=dict)
    tags: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)

    state: Mapped[TaskRunState | None] = relationship(
        lazy="joined",
        primaryjoin="foreign(TaskRun.state_id) == TaskRunState.id",
    )
    subflow_run: Mapped[FlowRun | None] = relationship(
        primaryjoin="TaskRun.id == foreign(FlowRun.parent_task_run_id)",
        lazy="select",
        viewonly=True,
        uselist=False,
    )

    __table_args__ = (
        sa.UniqueConstraint("flow_run_id", "task_key", "dynamic_key"),
        sa.Index("ix_task_run__name", "name"),
        sa.Index("ix_task_run__expected_start_time_desc", sa.desc("expected_start_time")),
        sa.Index("ix_task_run__next_scheduled_start_time_asc", sa.asc("next_scheduled_start_time")),
        sa.Index("ix_task_run__end_time_desc", sa.desc("end_time")),
        sa.Index("ix_task_run__state_type_start_time", "state_type", "start_time"),
        sa.Index("ix_task_run__tags", "tags", postgresql_using="gin").ddl_if(dialect="postgresql"),
    )

    def set_state(self, state: TaskRunState | None) -> None:
        if state is not None:
            state.task_run_id = self.id
        self.state = state


class ProcessedRequest(Base):
    """The inbox: one row per state-changing task id, with the outcome it returned."""

    __tablename__ = "processed_request"

    task_id: Mapped[str] = mapped_column(sa.String, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String, nullable=False)
    outcome: Mapped[Any | None] = mapped_column(JSON)
    created: Mapped[datetime.datetime] = mapped_column(Timestamp, nullable=False, default=now_utc, index=True)


class MaintenanceRun(Base):
    """When each beat-driven maintenance task last ran, and what it did: `flowruns check` reads it."""

    __tablename__ = "maintenance_run"

    task_name: Mapped[str] = mapped_column(sa.String, primary_key=True)
    last_run: Mapped[datetime.datetime] = mapped_column(Timestamp, nullable=False)
    outcome: Mapped[Any | None] = mapped_column(JSON)


FlowRun.task_runs = relationship(  # type: ignore[attr-defined]
    TaskRun, primaryjoin=FlowRun.id == TaskRun.flow_run_id, lazy="select", viewonly=True
)
TaskRun.flow_run = relationship(  # type: ignore[attr-defined]
    FlowRun, primaryjoin=FlowRun.id == TaskRun.flow_run_id, lazy="select", viewonly=True
)
