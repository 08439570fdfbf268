"""What a control-plane process holds: settings, a lazily created engine, a dispatcher."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

from celery import Celery
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cp.celery_app import make_celery
from cp.config_store import ConfigPush
from cp.db import create_schema, make_engine, session_scope
from cp.dispatch import CeleryDispatcher, Dispatcher, apply_config_message
from cp.models import Daemon, utcnow
from cp.runs import NewRun
from cp.settings import Settings


class ControlPlane:
    """Opens nothing until first used; read-only commands never need the broker."""

    def __init__(
        self, settings: Settings, app: Celery | None = None, *, dispatcher: Dispatcher | None = None
    ) -> None:
        self.settings = settings
        self._app = app
        self._dispatcher = dispatcher

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

    def send_runs(self, runs: list[NewRun]) -> None:
        for new in runs:
            if new.message is not None:
                self.dispatcher.send(new.message)
