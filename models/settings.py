"""The one settings object: every `FLOWRUNS_*` variable is read here and nowhere else.

Any setting may also come from a file (Docker and Kubernetes secrets): `FLOWRUNS_<NAME>_FILE`
names the file holding the value, used when `FLOWRUNS_<NAME>` itself is not set.
"""

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "FLOWRUNS_"


class SecretFilesSource(PydanticBaseSettingsSource):
    """Settings read from the files `FLOWRUNS_<NAME>_FILE` names (surrounding whitespace dropped)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = f"{ENV_PREFIX}{field_name.upper()}_FILE"
        path = os.environ.get(variable)
        if not path:
            return None, field_name, False
        try:
            return Path(path).read_text().strip(), field_name, False
        except OSError as error:
            raise ValueError(f"{variable}: cannot read {path} ({error.strerror})") from None

    def __call__(self) -> dict[str, Any]:
        values = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _key, _complex = self.get_field_value(field, name)
            if value is not None:
                values[name] = value
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, SecretFilesSource(settings_cls)

    database_url: str = "sqlite:///flowruns.db"
    database_password: SecretStr | None = None
    """Put into `database_url` (replacing any password there): keeps the password out of the URL
    an operator sees, e.g. from a secret file (`FLOWRUNS_DATABASE_PASSWORD_FILE`)."""
    broker_url: str = "redis://localhost:6379/0"
    broker_password: SecretStr | None = None
    """Put into `broker_url` (replacing any password there), as `database_password` is into its URL."""
    flower_basic_auth: SecretStr | None = None
    """`user:password` (comma-separated pairs for several users) that `flowruns flower` requires."""
    result_backend: str = "redis://localhost:6379/1"
    task_queue: str = Field(default="flowruns", min_length=1)
    visibility_timeout: int = Field(default=1800, ge=1)
    """Redis only: how long a message may stay unacknowledged before Redis hands it out again."""
    broker_delivery_limit: int = Field(default=6, ge=1)
    """RabbitMQ only: deliveries of one message (each lost with its worker) before it is dead-lettered."""
    broker_heartbeat_seconds: float = Field(default=120.0, ge=0)
    """RabbitMQ only: the AMQP heartbeat; a worker silent for about two of these (a partition, a
    hung host) loses its connection and RabbitMQ hands its unacknowledged messages to other workers.
    0 turns heartbeats off."""

    # Orchestration knobs (Prefect's server defaults).
    concurrency_slot_wait_seconds: float = Field(default=30.0, ge=0)
    max_cache_key_length: int = Field(default=2000, ge=1)
    max_parameter_size_bytes: int = Field(default=512 * 1024, ge=0)
    """The size of run and deployment parameters as compact JSON (Prefect's `max_parameter_size`); 0: none."""
    api_default_limit: int = Field(default=200, ge=1)
    graph_max_nodes: int = Field(default=10_000, ge=1)
    graph_max_artifacts: int = Field(default=10_000, ge=1)

    # Worker and beat.
    log_format: Literal["text", "json"] = "text"
    late_runs_after_seconds: float = Field(default=15.0, ge=0)
    late_runs_interval_seconds: float = Field(default=5.0, gt=0)
    reconcile_slots_interval_seconds: float = Field(default=30.0, gt=0)
    prune_requests_interval_seconds: float = Field(default=3600.0, gt=0)
    expired_pauses_interval_seconds: float = Field(default=5.0, gt=0)
    cancellation_cleanup_interval_seconds: float = Field(default=20.0, gt=0)
    cancelling_timeout_seconds: float = Field(default=300.0, gt=0)
    """How long a run may stay CANCELLING before beat marks it Cancelled (Prefect's default)."""
    processed_request_retention_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    task_max_retries: int = Field(default=8, ge=0)
    task_retry_backoff_max_seconds: int = Field(default=60, ge=1)
    task_soft_time_limit_seconds: float = Field(default=60.0, gt=0)
    task_time_limit_seconds: float = Field(default=120.0, gt=0)

    # What one statement may wait for (PostgreSQL, every connection).
    statement_timeout_seconds: float = Field(default=30.0, gt=0)
    lock_timeout_seconds: float = Field(default=5.0, gt=0)

    # What one message may hold (checked by the worker's main process before anything else).
    max_message_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    """The most bytes of one message's body. Room for the largest parameters Prefect takes (512 KiB
    as compact JSON, up to 1.5 times that as Celery's JSON encodes them, with a space after each
    `,` and `:`), as large `job_variables`, and the rest of the body."""
    max_message_depth: int = Field(default=32, ge=4, le=200)
    """The deepest a body nests (objects and lists, the kwargs object counted), `parameters` included."""
    max_string_length: int = Field(default=100_000, ge=1024)
    """The longest string (value or key) in a body or its headers, outside `parameters` and `job_variables`."""
    max_list_length: int = Field(default=10_000, ge=100)
    """The most items of one list in a body, outside `parameters` and `job_variables`."""
    max_object_keys: int = Field(default=10_000, ge=100)
    """The most keys of one object in a body, outside `parameters` and `job_variables`."""
    max_json_field_bytes: int = Field(default=512 * 1024, ge=1024)
    """The size, as compact JSON, of each free-form JSON field other than `parameters` (`job_variables`,
    `context`, state `data`, `labels`, `base_job_template`)."""
    max_worker_losses: int = Field(default=3, ge=1)

    # What one read may cost.
    max_read_offset: int = Field(default=100_000, ge=0)
    read_timeout_seconds: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _password_into_the_url(self) -> "Settings":
        if self.database_password is not None:
            from sqlalchemy.engine import make_url

            url = make_url(self.database_url).set(password=self.database_password.get_secret_value())
            self.database_url = url.render_as_string(hide_password=False)
        return self

    @model_validator(mode="after")
    def _password_into_the_broker_url(self) -> "Settings":
        if self.broker_password is not None:
            parts = urlsplit(self.broker_url)
            if not parts.hostname:
                raise ValueError("FLOWRUNS_BROKER_PASSWORD needs a host in FLOWRUNS_BROKER_URL")
            user = parts.username or ""
            password = quote(self.broker_password.get_secret_value(), safe="")
            host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
            self.broker_url = urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{password}@{host}"))
        return self

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
