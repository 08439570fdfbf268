"""Sample data and configuration for ``mycelial up --demo``."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from cp.cli.output import info
from cp.config_file import parse_config_text
from cp.config_store import apply_document, current_author
from cp.models import utcnow
from cp.runtime import ControlPlane
from cp.settings import Settings
from workers.confinement.policy import create_data_folder, data_folder

DEMO_ROWS = 5_000
DEMO_DAEMON = "local"


def demo_config_text() -> str:
    """examples/demo.yaml: from the checkout when run from one, else the copy in the wheel."""
    checkout = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"
    if checkout.exists():
        return checkout.read_text(encoding="utf-8")
    return resources.files("cp").joinpath("examples/demo.yaml").read_text(encoding="utf-8")


def create_sample_source(path: Path, *, rows: int = DEMO_ROWS, seed: int = 7) -> None:
    """A small shop database with an ``orders`` table; re-creating it is harmless."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE IF EXISTS orders")
        conn.execute(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount NUMERIC NOT NULL,"
            " currency TEXT NOT NULL, paid BOOLEAN NOT NULL, created_at TIMESTAMP NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)",
            (
                (
                    i,
                    f"customer-{rng.randint(1, 500):03d}",
                    round(rng.uniform(1, 500), 2),
                    rng.choice(["EUR", "USD", "GBP"]),
                    rng.random() > 0.1,
                    (start + timedelta(minutes=i)).isoformat(),
                )
                for i in range(1, rows + 1)
            ),
        )


def demo_document(settings: Settings) -> dict[str, Any]:
    """examples/demo.yaml with its files in this machine's demo daemon's data folder: the file
    names them where the compose daemon has it (``/var/lib/mycelial``), and a daemon's file
    connectors stay under its allowed roots."""
    document = parse_config_text(demo_config_text(), source="examples/demo.yaml")
    folder = data_folder(settings.home, DEMO_DAEMON)
    for connector in document["connectors"]:
        if connector["kind"] == "sqlite":
            connector["options"]["path"] = str(folder / Path(connector["options"]["path"]).name)
    return document


def prepare_demo(settings: Settings, *, app_factory: Callable[..., Any]) -> None:
    folder = create_data_folder(settings.home, DEMO_DAEMON)  # the daemon may not have made it yet
    source = folder / "shop.db"
    create_sample_source(source)
    document = demo_document(settings)
    cp = ControlPlane(settings, app_factory(settings))
    with cp.session() as session:
        result = apply_document(
            session,
            document,
            author=current_author(),
            comment="mycelial up --demo",
            source="examples/demo.yaml",
            now=utcnow(),
        )
    cp.push_configs(result.pushes)
    info(f"demo: {DEMO_ROWS} orders in {source}; config version {result.version} applied")
    info("demo: pipeline orders-to-warehouse runs every minute on daemon `local`; watch it with")
    info("  mycelial runs        mycelial daemons        mycelial pipelines")
    info("  or trigger one now:  mycelial run orders-to-warehouse --wait")
    info(f"demo: the copied table lands in {folder / 'warehouse.db'}")
