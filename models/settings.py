"""The one settings object: every `FLOWRUNS_*` variable is read here and nowhere else."""

from functools import lru_cache

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOWRUNS_", extra="ignore")

    database_url: str = "sqlite:///flowruns.db"
    broker_url: str = "redis://localhost:6379/0"
    result_backend: str = "redis://localhost:6379/1"
    task_queue: str = Field(default="flowruns", min_length=1)
    visibility_timeout: int = Field(default=1800, ge=1)

    # Orchestration knobs (Prefect's server defaults).
    concurrency_slot_wait_seconds: float = Field(default=30.0, ge=0)
    max_cache_key_length: int = Field(default=2000, ge=1)
    max_parameter_size_bytes: int = Field(default=512 * 1024, ge=0)
    api_default_limit: int = Field(default=200, ge=1)
    graph_max_nodes: int = Field(default=10_000, ge=1)
    graph_max_artifacts: int = Field(default=10_000, ge=1)

    # Worker and beat.
    late_runs_after_seconds: float = Field(default=15.0, ge=0)
    late_runs_interval_seconds: float = Field(default=5.0, gt=0)
    reconcile_slots_interval_seconds: float = Field(default=30.0, gt=0)
    prune_requests_interval_seconds: float = Field(default=3600.0, gt=0)
    processed_request_retention_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    task_max_retries: int = Field(default=8, ge=0)
    task_retry_backoff_max_seconds: int = Field(default=60, ge=1)
    task_soft_time_limit_seconds: float = Field(default=60.0, gt=0)
    task_time_limit_seconds: float = Field(default=120.0, gt=0)

    # What one statement may wait for (PostgreSQL, every connection).
    statement_timeout_seconds: float = Field(default=30.0, gt=0)
    lock_timeout_seconds: float = Field(default=5.0, gt=0)

    # What one message may hold (checked by the worker's main process before anything else).
    max_message_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_message_depth: int = Field(default=32, ge=4, le=200)
    max_string_length: int = Field(default=100_000, ge=1024)
    max_list_length: int = Field(default=10_000, ge=100)
    max_object_keys: int = Field(default=10_000, ge=100)
    max_json_field_bytes: int = Field(default=512 * 1024, ge=1024)
    max_worker_losses: int = Field(default=3, ge=1)

    # What one read may cost.
    max_read_offset: int = Field(default=100_000, ge=0)
    read_timeout_seconds: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _hard_limit_after_the_soft_one(self) -> "Settings":
        if self.task_time_limit_seconds <= self.task_soft_time_limit_seconds:
            raise ValueError("FLOWRUNS_TASK_TIME_LIMIT_SECONDS must exceed FLOWRUNS_TASK_SOFT_TIME_LIMIT_SECONDS")
        return self

    @property
    def maintenance_queue(self) -> str:
        """Where beat's maintenance tasks go: `flowruns.maintenance` by default."""
        return f"{self.task_queue}.maintenance"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings so the environment is read again (tests, CLI)."""
    get_settings.cache_clear()
