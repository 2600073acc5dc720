"""Pandas frequencies: seasonal periods, TimesFM's frequency category and inference from timestamps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

# Period of the main seasonal cycle per base frequency: the GluonTS table, except daily (weekly cycle, 7) and weekly
# (yearly cycle, 52) data. Sub-daily frequencies use the daily cycle.
_SEASONALITY_PER_UNIT = {"s": 86400, "min": 1440, "h": 24, "D": 7, "B": 5, "W": 52, "M": 12, "Q": 4, "Y": 1}
_FREQ_ALIASES = {
    "S": "s",
    "T": "min",
    "H": "h",
    "BH": "h",
    "bh": "h",
    "C": "D",
    "A": "Y",
    "AS": "Y",
    "YS": "Y",
    "YE": "Y",
    "BA": "Y",
    "BY": "Y",
    "QS": "Q",
    "QE": "Q",
    "BQ": "Q",
    "MS": "M",
    "ME": "M",
    "BM": "M",
    "BMS": "M",
    "BME": "M",
    "SM": "M",
    "SMS": "M",
    "CBMS": "M",
}


def _split_frequency(freq: str) -> tuple[int, str]:
    """Split a pandas frequency string into `(multiple, normalised base unit)`: `"15min"` -> `(15, "min")`."""
    if not isinstance(freq, str) or not freq:
        raise TypeError(f"`freq` must be a pandas frequency string such as 'h', '15min' or 'D', got {freq!r}.")
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
    except ValueError as error:
        raise ValueError(
            f"Unknown frequency {freq!r}: pass a pandas frequency string such as 'h', '15min' or 'D'."
        ) from error
    multiple = int(getattr(offset, "n", 1) or 1)
    base = offset.name.split("-")[0]
    base = _FREQ_ALIASES.get(base, base)
    if base in ("ms", "us", "ns", "L", "U", "N"):
        base = "sub-second"
    return multiple, base


def seasonal_period(freq: str | None, default: int = 1) -> int:
    """The length of the main seasonal cycle for a data frequency, in steps.

    Sub-daily data use the daily cycle (`"h"` -> 24, `"15min"` -> 96, `"10min"` -> 144), daily data the weekly one
    (7), business days 5, weekly data the yearly one (52), monthly 12, quarterly 4, yearly 1. Multiples divide the
    period when they can (`"2h"` -> 12), else the period is 1.

    Args:
        freq (`str`, *optional*):
            Pandas frequency string such as `"h"`, `"15min"`, `"D"`, `"W-SUN"`, `"MS"`.
        default (`int`, *optional*, defaults to 1):
            Returned when `freq` is `None`.

    Returns:
        `int`: the seasonal period, at least 1.
    """
    if freq is None:
        return default
    multiple, base = _split_frequency(freq)
    period = _SEASONALITY_PER_UNIT.get(base)
    if period is None:
        return 1
    return period // multiple if period % multiple == 0 and period >= multiple else 1


def timesfm_frequency_index(freq: str | None) -> int:
    """TimesFM's frequency category: 0 (high: up to daily), 1 (medium: weekly, monthly), 2 (low: quarterly, yearly).

    Args:
        freq (`str`, *optional*): Pandas frequency string; `None` gives 0 (TimesFM's default).
    """
    if freq is None:
        return 0
    _, base = _split_frequency(freq)
    if base in ("W", "M"):
        return 1
    if base in ("Q", "Y"):
        return 2
    return 0


def infer_frequency(timestamps: Sequence[Any] | np.ndarray | pd.Series) -> str | None:
    """Infer the pandas frequency string of sorted timestamps (`pd.infer_freq`, else the most common step).

    Args:
        timestamps: datetime-like values in time order.

    Returns:
        `str` or `None` when the timestamps are not datetimes or fewer than 3.
    """
    index = pd.DatetimeIndex(pd.to_datetime(np.asarray(timestamps)))
    if len(index) < 3:
        return None
    head = index[: min(len(index), 1000)]
    try:
        freq = pd.infer_freq(head)
    except (TypeError, ValueError):
        freq = None
    if freq is None:
        steps = pd.Series(head[1:] - head[:-1])
        steps = steps[steps > pd.Timedelta(0)]
        if steps.empty:
            return None
        try:
            freq = pd.tseries.frequencies.to_offset(steps.mode().iloc[0]).freqstr
        except ValueError:
            return None
    return freq
