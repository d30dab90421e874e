"""Working days in mainland China: weekends and public holidays off, make-up working days
(调休, a Saturday or Sunday worked to bridge a holiday) on.

The calendar is the maintained ``holidays`` package (``holidays.China``), never a table typed
in here: the State Council announces each year's schedule and the package follows it.
Settlement dates (T+1) and refund arrival estimates count working days with it.
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache

from holidays.countries.china import China


@lru_cache(maxsize=64)
def _china(year: int) -> China:
    return China(years=year)  # type: ignore[no-untyped-call]


def is_working_day(day: date) -> bool:
    return bool(_china(day.year).is_working_day(day))


def add_working_days(day: date, count: int) -> date:
    """The ``count``-th working day after ``day`` (``count == 0``: ``day`` itself if it is a
    working day, else the next one)."""
    if count < 0:
        raise ValueError("count must not be negative")
    current = day
    if count == 0:
        while not is_working_day(current):
            current += timedelta(days=1)
        return current
    while count:
        current += timedelta(days=1)
        if is_working_day(current):
            count -= 1
    return current
