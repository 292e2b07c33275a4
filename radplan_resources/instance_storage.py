"""Dagster's Postgres storage, waiting out a database outage instead of failing the work in flight.

dagster-postgres gives up on a refused connection after ~6 s (5 retries from 0.2 s). A Postgres restart, failover or
crash recovery takes longer, and then:

- a run worker that logs an event (a materialization, a step start) raises ``DagsterPostgresException`` inside the
  step: the run fails as an asset failure, which the run retry policy does not retry, so the patient is never
  refreshed;
- the code server's thread that notices dead run workers (``grpc-server-cleanup``) dies on the same exception, and
  every run whose worker dies afterwards (kill -9, the out-of-memory killer) stays STARTED for ever: never failed,
  never retried (seen with tests/production/test_daemon_operations.py);
- a process that starts while the database is down (a daemon restarted after a crash) exits from the storage
  constructor, and nothing is launched any more (seen in the same test).

Here building each storage, and every new database connection of the run, event-log and schedule storages, is retried for up to
``outage_wait_seconds`` (dagster.yaml, default 300 s) before the error is raised, in every process that loads the
instance: daemon, webserver, code server, run workers. Only connecting is retried, never a statement: a statement
cut off by the database's death fails as before (retrying it could write an event twice).

The webserver is the one process that keeps connections open (dagster's ``optimize_for_webserver``: a pool per
storage). After a database restart each pooled connection was dead and failed the next query the UI made (HTTP 500
on the pages an operator opens to see what the outage did). Here a pooled connection is pinged when it is taken from
the pool, and a dead one is replaced by a new connection (which waits out the outage like any other).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import sqlalchemy.event
import sqlalchemy.exc
from dagster import Field, IntSource
from dagster._core.storage.base_storage import DagsterStorage
from dagster._core.storage.config import pg_config
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import DagsterPostgresException, get_token_provider_from_config, pg_url_from_config

DEFAULT_OUTAGE_WAIT_S = 300
PAUSE_S = 1.0
_logger = logging.getLogger("radplan.instance_storage")
T = TypeVar("T")


def when_reachable(connect: Callable[[], T], wait_s: float, *, pause_s: float = PAUSE_S, clock=time.monotonic, sleep=time.sleep) -> T:
    """``connect()``, tried again every ``pause_s`` while the database refuses connections, for at most ``wait_s``."""
    deadline = clock() + wait_s
    warned = False
    while True:
        try:
            return connect()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, DagsterPostgresException) as error:
            if clock() + pause_s > deadline or not _unreachable(error):
                raise
            if not warned:
                # No URL or credentials in the message: the class name says what failed.
                _logger.warning(f"Dagster's Postgres database is unreachable: waiting up to {wait_s:.0f} s for it")
                warned = True
            sleep(pause_s)


def _unreachable(error: Exception) -> bool:
    """Refused, reset or still starting up (worth waiting for); not a wrong password or a missing database."""
    if isinstance(error, DagsterPostgresException):  # dagster-postgres' own retries gave up: judge by what they saw
        if error.__cause__ is None:
            return False
        error = error.__cause__
    text = str(getattr(error, "orig", error)).lower()
    return not any(word in text for word in ("authentication", "does not exist", "permission denied"))


def _ping_pooled_connection(dbapi_connection, connection_record, connection_proxy) -> None:
    """SQLAlchemy's pool ``checkout`` event: a connection the database no longer serves (it restarted) is discarded;
    raising DisconnectionError makes the pool open a new one instead of handing out the dead one."""
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
    except Exception as error:  # psycopg2's OperationalError / InterfaceError: closed by the server, or reset
        raise sqlalchemy.exc.DisconnectionError(f"pooled connection is dead: {type(error).__name__}") from error


class _WaitsForTheDatabase:
    """Mixin for the three dagster-postgres storages: connections wait out an outage (``_outage_wait_s``)."""

    _outage_wait_s: float = DEFAULT_OUTAGE_WAIT_S
    _engine: sqlalchemy.engine.Engine

    def optimize_for_webserver(self, statement_timeout: int, pool_recycle: int, max_overflow: int) -> None:
        super().optimize_for_webserver(statement_timeout, pool_recycle, max_overflow)  # ty: ignore[unresolved-attribute]
        sqlalchemy.event.listen(self._engine, "checkout", _ping_pooled_connection)

    @contextmanager
    def _patient_connection(self) -> Iterator[sqlalchemy.engine.Connection]:
        connection = when_reachable(self._engine.connect, self._outage_wait_s)
        try:
            yield connection
        finally:
            connection.close()


# Every query of a storage opens its connection through one method: connect() for runs and schedules, _connect()
# for the event log (run_connection and index_connection included).
class OutageTolerantRunStorage(_WaitsForTheDatabase, PostgresRunStorage):
    def connect(self):
        return self._patient_connection()


class OutageTolerantEventLogStorage(_WaitsForTheDatabase, PostgresEventLogStorage):
    def _connect(self):
        return self._patient_connection()


class OutageTolerantScheduleStorage(_WaitsForTheDatabase, PostgresScheduleStorage):
    def connect(self, run_id: str | None = None):
        return self._patient_connection()


def _build(storage_class, postgres_url: str, should_autocreate_tables: bool, token_provider, wait_s: float):
    """A storage built once the database answers. The constructor reads the table list with dagster's short retry
    (~6 s), so it is retried as a whole: a daemon restarted while Postgres restarts too waits for it instead of exiting
    (seen in tests/production/test_daemon_operations.py: the daemon died in this constructor and nothing ran again)."""
    storage = when_reachable(lambda: storage_class(postgres_url, should_autocreate_tables, token_provider=token_provider), wait_s)
    storage._outage_wait_s = wait_s
    return storage


class OutageTolerantPostgresStorage(DagsterPostgresStorage):
    """``storage: postgres`` of dagster.yaml, with connections that wait out a database outage (module docstring)."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True, inst_data: ConfigurableClassData | None = None,
                 token_provider=None, outage_wait_s: float = DEFAULT_OUTAGE_WAIT_S):  # fmt: skip
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        self._run_storage = _build(OutageTolerantRunStorage, postgres_url, should_autocreate_tables, token_provider, outage_wait_s)
        self._event_log_storage = _build(OutageTolerantEventLogStorage, postgres_url, should_autocreate_tables, token_provider, outage_wait_s)
        self._schedule_storage = _build(OutageTolerantScheduleStorage, postgres_url, should_autocreate_tables, token_provider, outage_wait_s)
        DagsterStorage.__init__(self)

    @classmethod
    def config_type(cls):
        return {**pg_config(), "outage_wait_seconds": Field(IntSource, is_required=False, default_value=DEFAULT_OUTAGE_WAIT_S)}

    @classmethod
    def from_config_value(cls, inst_data, config_value):  # ty: ignore[invalid-method-override]
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
            outage_wait_s=config_value.get("outage_wait_seconds", DEFAULT_OUTAGE_WAIT_S),
        )
