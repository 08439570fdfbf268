"""The benchmark harness: its report shape, its broker choice and its command line (no benchmark is run)."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS, main
from bench.dispatch import DAEMONS, config_text
from bench.harness import Result, broker, redact, report, report_line
from cp.config_file import parse_config_text

ROOT = Path(__file__).resolve().parents[1]


def test_a_report_line_is_one_json_object_with_the_documented_shape() -> None:
    results = [Result(case="fast", value=300.0, unit="runs/s", baseline=1200.0)]

    line = report_line("dispatch", results)

    assert "\n" not in line
    assert json.loads(line) == {
        "bench": "dispatch",
        "results": [{"case": "fast", "value": 300.0, "unit": "runs/s", "baseline": 1200.0, "ratio": 0.25}],
    }


def test_ratio_compares_the_value_with_its_baseline() -> None:
    assert Result(case="c", value=50.0, unit="x/s", baseline=25.0).ratio == 2.0
    assert math.isnan(Result(case="c", value=50.0, unit="x/s", baseline=0.0).ratio)


def test_a_report_keeps_the_order_of_its_cases() -> None:
    results = [Result(case=name, value=1.0, unit="x/s", baseline=1.0) for name in ("b", "a")]

    assert [r["case"] for r in report("n", results)["results"]] == ["b", "a"]


def test_an_unknown_benchmark_exits_2_with_one_line_on_stderr() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "unknown benchmark 'nope'" in done.stderr


def test_bad_arguments_exit_2_with_one_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dispatch", "--bogus"])

    assert exited.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_every_registered_benchmark_names_an_importable_module_with_run() -> None:
    for module in BENCHMARKS.values():
        assert callable(importlib.import_module(module).run)


def test_a_broker_url_in_the_environment_is_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYCELIAL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    monkeypatch.setenv("MYCELIAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

    with broker() as url:
        assert url == "redis://127.0.0.1:6379/14"


def test_a_password_never_shows_in_a_progress_line() -> None:
    assert redact("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_the_dispatch_config_pins_one_pipeline_to_each_daemon() -> None:
    document = parse_config_text(config_text(), source="<test>")

    assert len(document["daemons"]) == DAEMONS
    assert len(document["connectors"]) == 2
    assert [p["daemon"] for p in document["pipelines"]] == [d["name"] for d in document["daemons"]]


def test_the_movement_rows_are_the_same_on_every_run_and_mix_eight_types() -> None:
    from bench.movement import COLUMNS, generate

    rows = list(generate(40))

    assert rows == list(generate(40))
    assert list(generate(5, start=36)) == rows[35:]
    assert all(len(row) == len(COLUMNS) == 8 for row in rows)
    assert {type(v).__name__ for v in rows[0]} == {"int", "str", "Decimal", "float", "bool", "datetime"}
    assert rows[16][7] is None and rows[15][7] is not None  # a NULL note every 17th row
    assert len({len(row[7] or "") for row in rows}) > 10  # notes of varying length


def test_a_movement_job_is_a_valid_run_job_in_replace_mode_with_batches_of_10000() -> None:
    from bench.movement import PAIRS, job_payload
    from cp.protocol import RunJob, parse

    work = Path("/tmp/mycb-work")
    for pair in PAIRS:
        job = parse(RunJob, job_payload(pair, "mycelial_bench_test", work=work))

        assert (job.pipeline.source.kind, job.pipeline.destination.kind) == tuple(pair.split("->"))
        for end in (job.pipeline.source, job.pipeline.destination):  # the daemon's root: the work folder
            assert "path" not in end.options or Path(end.options["path"]).is_relative_to(work)
        assert job.pipeline.mode == "replace"
        assert job.pipeline.batch_size == 10_000
        assert "postgres" not in pair or "${env:" in json.dumps(job.pipeline.model_dump())


def test_the_movement_urls_for_dlt_keep_the_server_and_never_need_a_real_password() -> None:
    from bench.movement import count_label, sqlalchemy_url, with_password

    url = "postgresql://postgres@127.0.0.1:5432/test"
    assert sqlalchemy_url(url) == "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
    assert with_password(url) == "postgresql://postgres:unused@127.0.0.1:5432/test"
    assert with_password("postgresql://u:pw@h/db") == "postgresql://u:pw@h/db"
    assert [count_label(n) for n in (1_000_000, 100_000, 10_000)] == ["1M", "100k", "10k"]
