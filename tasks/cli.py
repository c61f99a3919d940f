"""The `flowruns` command: database migrations, the demo, benchmarks and chaos scenarios."""

import sys
from typing import Any

import click

from models.settings import get_settings


@click.group()
@click.version_option(package_name="flowruns", prog_name="flowruns")
def main() -> None:
    """flowruns: Prefect-compatible flow-run orchestration as a Celery worker."""


@main.group()
def db() -> None:
    """Apply or roll back the schema migrations on FLOWRUNS_DATABASE_URL."""


@db.command()
@click.argument("revision", default="head")
@click.option("--sql", is_flag=True, help="print the SQL the migrations would run; change nothing")
def upgrade(revision: str, sql: bool) -> None:
    """Apply migrations up to REVISION (head)."""
    from models import migrations

    if sql:
        migrations.upgrade(revision=revision, sql=True)
        return
    migrations.upgrade(revision=revision)
    click.echo(f"database at {migrations.current()} ({_safe_url()})")


@db.command()
@click.argument("revision", required=False)
@click.option("--yes", is_flag=True, help="roll back without asking")
def downgrade(revision: str | None, yes: bool) -> None:
    """Roll migrations back to REVISION (required: `base` drops every table). Asks first on a
    terminal; elsewhere refuses without --yes."""
    from models import migrations

    if revision is None:
        raise click.UsageError("name the revision to roll back to (see `flowruns db history`; base drops every table)")
    target = f"{revision} (every table is dropped)" if revision == "base" else revision
    question = f"Roll {_safe_url()} back from {migrations.current() or 'base'} to {target}?"
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException(f"{question} Refused: pass --yes to roll back without a terminal.")
        click.confirm(question, abort=True)
    migrations.downgrade(revision=revision)
    click.echo(f"database at {migrations.current() or 'base'} ({_safe_url()})")


@db.command()
def current() -> None:
    """Print the applied revision."""
    from models import migrations

    click.echo(migrations.current() or "base")


@db.command()
def history() -> None:
    """List the revisions, newest first, marking the applied one."""
    from models import migrations

    migrations.history()


def _safe_url() -> str:
    """The database URL with its password hidden, fit for output."""
    from sqlalchemy.engine import make_url

    return make_url(get_settings().database_url).render_as_string(hide_password=True)


@main.command()
@click.argument("run_id", type=click.UUID)
@click.option("--format", "fmt", type=click.Choice(["text", "mermaid", "dot"]), default="text", show_default=True)
@click.option("--over-the-wire", is_flag=True,
              help="ask a worker (flow_runs.read_flow_run_graph on FLOWRUNS_BROKER_URL) instead of the database")
def graph(run_id: Any, fmt: str, over_the_wire: bool) -> None:
    """Draw a flow run's graph of task runs and subflows."""
    from models.errors import FlowrunsError
    from flowruns_tools.graph_view import render

    try:
        if over_the_wire:
            from tasks import producer

            run_graph = producer.read_flow_run_graph(None, run_id)
        else:
            from models import flow_runs
            from models.database import unit_of_work

            with unit_of_work() as session:
                run_graph = flow_runs.read_flow_run_graph(session, run_id)
    except FlowrunsError as error:
        raise click.ClickException(str(error)) from None
    click.echo(render(run_graph, fmt, title=f"flow run {run_id}"))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(flower_args: tuple[str, ...]) -> None:
    """Flower on this app (`celery -A tasks flower`), only with credentials: FLOWRUNS_FLOWER_BASIC_AUTH
    (or FLOWRUNS_FLOWER_BASIC_AUTH_FILE) holds `user:password`. Other options go to Flower."""
    import os

    credentials = get_settings().flower_basic_auth
    if credentials is None or ":" not in credentials.get_secret_value():
        raise click.ClickException(
            "refusing to start Flower without credentials: set FLOWRUNS_FLOWER_BASIC_AUTH=user:password "
            "(or FLOWRUNS_FLOWER_BASIC_AUTH_FILE to a file holding it)"
        )
    # Handed over in the environment, not on the command line, where any local user could read it.
    environment = {**os.environ, "FLOWER_BASIC_AUTH": credentials.get_secret_value()}
    os.execvpe("celery", ["celery", "-A", "tasks", "flower", *flower_args], environment)


@main.command()
@click.option("--only", default="", help="comma-separated checks to run (database, schema, broker, worker, beat)")
def check(only: str) -> None:
    """Check the database, its schema, the broker, a worker and beat; exit 1 if any check fails."""
    from tasks.worker_app import app
    from tasks.health import CHECKS, run_checks

    names = [name.strip() for name in only.split(",") if name.strip()] or list(CHECKS)
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise click.BadParameter(f"unknown checks {unknown}; choose from {', '.join(CHECKS)}", param_hint="--only")
    results = run_checks(app, get_settings(), names)
    for result in results:
        click.echo(f"{result.name:<9} {'ok' if result.ok else 'FAIL':<4}  {result.detail}")
    if not all(result.ok for result in results):
        sys.exit(1)


@main.command()
@click.option("--port", default=9808, show_default=True, help="port of the /metrics endpoint")
@click.option("--address", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: all)")
def metrics(port: int, address: str) -> None:
    """Serve Prometheus metrics: slots per deployment, queue depth, requests and transitions by
    outcome, retries by cause, inbox replays, reconciler repairs, runs marked late."""
    import logging

    from tasks.worker_app import app
    from tasks.metrics import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(app, get_settings(), port, address)
    except KeyboardInterrupt:
        pass


@main.command()
def contract() -> None:
    """Print the wire contract as JSON Schema: every task's kwargs and result (docs/contract.json)."""
    from tasks.contract import contract_json

    click.echo(contract_json(), nl=False)


@main.command()
@click.option("--runs", default=8, show_default=True, help="flow runs in the deployment")
@click.option("--database", default=None, help="SQLite file (default: a fresh temporary file)")
def demo(runs: int, database: str | None) -> None:
    """Run an in-process worker on an in-memory broker and drive a realistic workload."""
    from flowruns_tools.demo import run_demo

    sys.exit(run_demo(runs=runs, database=database))


@main.group()
def bench() -> None:
    """Measure throughput and latency on the configured PostgreSQL (and Redis)."""


@bench.command("models")
@click.option("--sizes", default="10000,100000", show_default=True, help="table sizes for read/count latency")
@click.option("--transitions", default=1000, show_default=True, help="runs driven through a full life")
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
def bench_models(sizes: str, transitions: int, as_json: bool) -> None:
    """In-process creates/s, transitions/s, deletes/s, read/count latency."""
    from flowruns_tools.bench import run_models_bench

    run_models_bench([int(s) for s in sizes.split(",") if s], transitions, as_json)


@bench.command("limit")
@click.option("--seconds", default=5.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_limit(seconds: float, as_json: bool) -> None:
    """PostgreSQL's single-row commit rate on this machine: the physical ceiling."""
    from flowruns_tools.bench import run_limit_bench

    run_limit_bench(seconds, as_json)


@bench.command("worker")
@click.option("--concurrency", "concurrencies", default="1,2", show_default=True,
              help="worker process counts to measure, comma-separated")
@click.option("--runs", default=3000, show_default=True, help="runs driven SCHEDULED → PENDING → RUNNING → COMPLETED")
@click.option("--in-flight", default=2000, show_default=True, help="requests outstanding at once (one per run)")
@click.option("--redis-db", default=13, show_default=True, help="an empty Redis database on the broker's server")
@click.option("--json", "as_json", is_flag=True)
def bench_worker(concurrencies: str, runs: int, in_flight: int, redis_db: int, as_json: bool) -> None:
    """End to end: a foreign producer through Redis to a committed state and the result back."""
    from flowruns_tools.bench import run_worker_bench

    sys.exit(run_worker_bench([int(c) for c in concurrencies.split(",") if c], runs, in_flight, redis_db, as_json))


@main.command()
@click.option("--short", is_flag=True, help="CI size: a few hundred requests per scenario")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.option("--scenario", "scenarios", multiple=True, help="run only these (repeatable); default: all")
@click.option("--seed", default=0, show_default=True, help="fault moments and generated inputs follow it")
@click.option("--redis-db", default=13, show_default=True,
              help="an empty Redis database on the broker's server, used whole and emptied afterwards")
@click.option("--pg-bin", default=None, help="directory of initdb and pg_ctl (default: found)")
@click.option("--pg-port", default=55432, show_default=True, help="port of the scenario's own PostgreSQL")
@click.option("--redis-port", default=56379, show_default=True, help="port of the scenario's own redis-server")
@click.option("--broker", type=click.Choice(["redis", "rabbitmq", "both"]), default="redis", show_default=True,
              help="the broker the scenarios run on (results stay in Redis); both: every scenario on each")
@click.option("--rabbitmq-url", default="amqp://127.0.0.1:5672", show_default=True,
              help="a RabbitMQ node that rabbitmqctl reaches (no user in the URL: RabbitMQ's local `guest`): "
                   "each scenario makes a vhost of its own on it")
@click.option("--rabbitmq-port", default=56720, show_default=True,
              help="port of the broker-restart scenario's own RabbitMQ node")
@click.option("--logs", type=click.Path(file_okay=False), default=None, help="keep worker logs in this directory")
@click.option("--worker-code", type=click.Path(exists=True, file_okay=False), default=None,
              help="run the workers from this source tree (an exported commit) instead of this checkout")
@click.option("--soak", "soak_minutes", type=float, default=None, metavar="MINUTES",
              help="instead of the scenarios: a steady mixed load with beat running for MINUTES, a row of "
                   "throughput, latency, worker memory and table sizes per interval, the same checks at the end")
@click.option("--soak-plot", type=click.Path(dir_okay=False), default="flowruns-soak.png", show_default=True,
              help="where the soak writes its PNG plot")
@click.option("--soak-interval", type=click.FloatRange(min=1.0), default=60.0, show_default=True,
              help="seconds per row of the soak's series")
def chaos(short: bool, as_json: bool, scenarios: tuple[str, ...], seed: int, redis_db: int, pg_bin: str | None,
          pg_port: int, redis_port: int, broker: str, rabbitmq_url: str, rabbitmq_port: int, logs: str | None,
          worker_code: str | None, soak_minutes: float | None, soak_plot: str, soak_interval: float) -> None:
    """Fault-injection scenarios: worker SIGKILL, PostgreSQL and broker restarts, duplicate delivery, bad
    input, hostile input, on Redis or RabbitMQ or both. Each checks that every request took effect
    exactly once; exits 1 on any loss, duplicate, drift or lost worker process. With --soak, a long
    steady load instead (docs/SOAK.md)."""
    from pathlib import Path

    from flowruns_tools import chaos as harness

    scenarios = tuple("broker-restart" if name == "redis-restart" else name for name in scenarios)
    unknown = [name for name in scenarios if name not in harness.SCENARIOS]
    if unknown:
        raise click.BadParameter(f"unknown scenario {unknown}; choose from {', '.join(harness.SCENARIOS)}")
    if soak_minutes is not None and (soak_minutes <= 0 or scenarios or broker == "both"):
        raise click.UsageError("--soak takes a positive number of minutes, one broker (redis or rabbitmq) and no "
                               "--scenario")
    settings = get_settings()
    options = harness.Options(
        database_url=settings.database_url, redis_url=settings.broker_url, short=short, seed=seed,
        redis_db=redis_db, pg_bindir=pg_bin, pg_port=pg_port, redis_port=redis_port,
        rabbitmq_url=rabbitmq_url, rabbitmq_port=rabbitmq_port,
        log_dir=Path(logs) if logs else None, worker_code=Path(worker_code) if worker_code else None,
    )
    try:
        harness.postgres_url(settings.database_url)
    except harness.ChaosSetupError as error:
        raise click.ClickException(str(error)) from None
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        raise click.ClickException(f"chaos scenarios need a Redis (for results, and as a broker); "
                                   f"FLOWRUNS_BROKER_URL is {harness.safe_url(settings.broker_url)}")
    if soak_minutes is not None:
        from flowruns_tools.chaos.soak import SoakPlan, soak_command

        options.broker = broker
        plan = SoakPlan(minutes=soak_minutes, interval_seconds=soak_interval, plot=Path(soak_plot))
        sys.exit(soak_command(options, plan, as_json))
    brokers = ("redis", "rabbitmq") if broker == "both" else (broker,)
    sys.exit(harness.run_chaos(options, list(scenarios) or list(harness.SCENARIOS), as_json, brokers))


if __name__ == "__main__":
    main()
