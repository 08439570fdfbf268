"""What a control-plane process holds: settings, a lazily created engine, a dispatcher."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import cached_property

from celery import Celery
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cp.celery_app import make_celery
from cp.config_store import ConfigPush
from cp.db import create_schema, make_engine, session_scope
from cp.dispatch import CeleryDispatcher, Dispatcher, Outgoing, apply_config_message
from cp.models import Daemon, utcnow
from cp.runs import mark_published
from cp.settings import Settings

log = logging.getLogger(__name__)


class ControlPlane:
    """Opens nothing until first used; read-only commands never need the broker."""

    def __init__(
        self, settings: Settings, app: Celery | None = None, *, dispatcher: Dispatcher | None = None
    ) -> None:
        self.settings = settings
        self._app = app
        self._dispatcher = dispatcher
        # when this worker last began consuming (started, or reconnected after a broker outage):
        # heartbeats could not reach it before, so no daemon is silent for longer than this
        self.consuming_since: datetime | None = None

    @cached_property
    def app(self) -> Celery:
        return self._app or make_celery(self.settings)

    @cached_property
    def dispatcher(self) -> Dispatcher:
        return self._dispatcher or CeleryDispatcher(self.app)

    @cached_property
    def engine(self) -> Engine:
        engine = make_engine(self.settings.effective_database_url)
        create_schema(engine)
        return engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.engine) as session:
            yield session

    def push_configs(self, pushes: list[ConfigPush]) -> None:
        """Send each push (after its version is committed) and note when it went out."""
        for push in pushes:
            self.dispatcher.send(apply_config_message(push, expires=self.settings.apply_config_expires))
        if pushes:
            names = [push.daemon for push in pushes]
            with self.session() as session:
                now = utcnow()
                for daemon in session.exec(select(Daemon).where(col(Daemon.name).in_(names))):
                    daemon.config_pushed_at = now
                    session.add(daemon)

    def publish_jobs(self, messages: list[Outgoing]) -> None:
        """Publish job messages, then record which went out; a failed one is left to the reconciler."""
        sent: list[str] = []
        failed: Exception | None = None
        for message in messages:
            try:
                self.dispatcher.send(message)
            except Exception as exc:  # the broker is down: the reconciler publishes it later
                log.warning("could not publish %s: %s", message.argsrepr, exc)
                failed = exc
                continue
            sent.append(str(message.payload["run_key"]))
        if sent:
            with self.session() as session:
                mark_published(session, sent, now=utcnow())
        if failed is not None and not sent:
            raise failed
