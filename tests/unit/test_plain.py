"""Which stored values count as plain: read alike by Python's converters and PostgreSQL's input."""

from __future__ import annotations

import pytest

from workers.movement import plain


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["2024-01-01"],
        ["2024-01-01T10:00", "2024-01-01 10:00:00", "2024-01-01T10:00:00.5", "2024-01-01 10:00:00.123456"],
        [
            "2024-01-01T10:00:00Z",
            "2024-01-01T10:00:00+02:00",
            "2024-01-01T10:00:00-0530",
            "2024-01-01 10:00+05",
        ],
    ],
)
def test_common_iso_shapes_are_plain(values: list[str]) -> None:
    assert plain.iso(values)


@pytest.mark.parametrize(
    "odd",
    [
        "2024-01-01T10:00:00.1234567",  # PostgreSQL rounds the seventh digit, Python truncates it
        "2024-W01-1",  # a week date
        "2024-01-01T10",  # an hour alone
        "2024-01-01 10:00:00,5",  # a comma before the fraction
        "20240101T100000",  # the basic format
        "2024-01-01T10:00:00+01:00:30",  # an offset with seconds
        " 2024-01-01",
        "2024-01-01\n2024-01-02",  # a separator inside a value
        20240101,  # not text
    ],
)
def test_other_forms_are_not_plain_even_beside_plain_ones(odd: object) -> None:
    assert not plain.iso(["2024-01-01", odd])


def test_numbers_are_plain_as_ints_floats_and_plain_text() -> None:
    assert plain.number([1, 2.5, "3", "-4.5e-3", "+.5", "6."])
    assert plain.integer(["1", "+2", "-3", 4])
    for odd in ["NaN", "Infinity", "-inf", "1_000", " 1", "1 ", "", "0x10", "١"]:
        assert not plain.number([1.5, odd]), odd
        assert not plain.integer(["1", odd]), odd
    assert not plain.integer(["1.5"]) and not plain.number([b"1"]) and not plain.number([True])
