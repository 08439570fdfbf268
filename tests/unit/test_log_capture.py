"""What the daemon's log handler puts in the spool: scrubbed, clipped, levelled, labelled by job."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cp.settings import MAX_LOG_MESSAGE_CHARS
from workers.logs.capture import LogCapture, attach, detach, job_logging, level_name
from workers.logs.spool import LogSpool
from workers.secrets import remember, scrubbed

SMALL = 4 * 64 * 2**10


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[tuple[logging.Logger, LogSpool, LogCapture]]:
    spool = LogSpool(tmp_path, max_bytes=SMALL)
    handler = LogCapture(spool, scrub=scrubbed, on_record=lambda: None)
    logger = logging.getLogger(f"test.capture.{tmp_path.name}")
    logger.propagate = False
    attach(handler, level=logging.INFO, logger=logger)
    yield logger, spool, handler
    detach(handler, logger=logger)


def spooled(spool: LogSpool) -> list[dict[str, object]]:
    return spool.read(limit=1_000, max_bytes=2**30)


def test_a_secret_value_never_reaches_the_spool(
    captured: tuple[logging.Logger, LogSpool, LogCapture],
) -> None:
    logger, spool, _ = captured
    remember(["hunter2-very-secret"])
    logger.warning("connecting with %s to postgresql://app:pw123456@db/x", "hunter2-very-secret")
    try:
        raise RuntimeError("failed: hunter2-very-secret")
    except RuntimeError:
        logger.exception("boom")
    text = " ".join(str(r["message"]) for r in spooled(spool))
    assert "hunter2" not in text and "pw123456" not in text
    assert "***" in text and "RuntimeError" in text


def test_records_of_a_job_carry_its_labels(captured: tuple[logging.Logger, LogSpool, LogCapture]) -> None:
    logger, spool, _ = captured
    logger.info("before")
    with job_logging(pipeline="orders", run_key="orders@1", attempt=2):
        logger.info("inside")
    records = spooled(spool)
    assert [(r["pipeline"], r["run_key"], r["attempt"]) for r in records] == [
        (None, None, None),
        ("orders", "orders@1", 2),
    ]


def test_a_long_message_is_clipped_with_a_marker(
    captured: tuple[logging.Logger, LogSpool, LogCapture],
) -> None:
    logger, spool, _ = captured
    logger.info("x" * 100_000)
    (record,) = spooled(spool)
    message = str(record["message"])
    assert len(message) == MAX_LOG_MESSAGE_CHARS and message.endswith("[...]")


def test_below_the_level_nothing_is_spooled(captured: tuple[logging.Logger, LogSpool, LogCapture]) -> None:
    logger, spool, _ = captured
    logger.debug("chatter")
    assert spooled(spool) == []


def test_records_of_an_ignored_thread_stay_out(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path, max_bytes=SMALL)
    sender = threading.Thread(target=lambda: None)
    handler = LogCapture(
        spool, scrub=scrubbed, on_record=lambda: None, ignore=lambda: threading.current_thread() is sender
    )
    logger = logging.getLogger("test.capture.ignored")
    logger.propagate = False
    attach(handler, level=logging.INFO, logger=logger)
    sender.run = lambda: logger.warning("about shipping")  # type: ignore[method-assign]
    sender.start()
    sender.join()
    logger.warning("about the job")
    detach(handler, logger=logger)
    assert [r["message"] for r in spooled(spool)] == ["about the job"]


def test_a_lower_shipping_level_keeps_the_other_handlers_where_they_were() -> None:
    logger = logging.getLogger("test.capture.levels")
    logger.setLevel(logging.INFO)
    console = logging.StreamHandler()
    logger.addHandler(console)
    handler = LogCapture.__new__(LogCapture)
    logging.Handler.__init__(handler)
    attach(handler, level=logging.DEBUG, logger=logger)
    assert logger.level == logging.DEBUG and console.level == logging.INFO
    logger.removeHandler(console)
    detach(handler, logger=logger)


@pytest.mark.parametrize(
    ("levelno", "name"),
    [(5, "DEBUG"), (10, "DEBUG"), (25, "INFO"), (30, "WARNING"), (45, "ERROR"), (60, "CRITICAL")],
    ids=str,
)
def test_custom_levels_ship_as_the_standard_level_below(levelno: int, name: str) -> None:
    assert level_name(levelno) == name
