"""Date shifting for the Retain Longitudinal Temporal Information with Modified Dates Option (PS3.15 E.3.6).

Every date of one patient moves by the same whole number of days, so intervals between a patient's studies and
ages computed from shifted dates stay what they were. DA values (``YYYYMMDD``, PS3.5 6.2) and the date part of DT
values (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``) are shifted; the time of day and the DT time zone offset (``&ZZXX``) are
kept as they are. Partial dates (``YYYY``, ``YYYYMM``) are shifted from their first day and written back with the
same precision. A value that does not parse is replaced by the empty value (never kept).

A DT value may also be a range ``A-B``, ``A-`` or ``-B`` (PS3.5 6.2 allows ranges in query context, PS3.4 C.2.2.2.5,
and some archives store them): each end is shifted by the same offset, keeping its own precision and offset. A
sign followed by a valid offset (``&ZZXX``, -1200 to +1400) is that end's offset, so ``20200101120000-0500`` is
one value; any other hyphen separates the two ends.
"""

from __future__ import annotations

import datetime as dt
import re


def shift_da(value: str, days: int) -> str:
    """Shift one DA value (or a backslash-separated multi-value) by ``days``; "" when it does not parse."""
    return "\\".join(_shift_date_part(v.strip(), days) for v in value.split("\\"))


def _shift_date_part(date: str, days: int) -> str:
    if not date:
        return ""
    if len(date) not in (4, 6, 8) or not date.isdigit():
        return ""
    padded = date + "0101"[: 8 - len(date)] if len(date) < 8 else date
    if len(padded) == 6:
        padded += "01"
    try:
        day = dt.date(int(padded[:4]), int(padded[4:6]), int(padded[6:8]))
        shifted = day + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    return shifted.strftime("%Y%m%d")[: len(date)]


# One DT value (PS3.5 6.2): YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]] and an optional offset &ZZXX, & being + or -;
# an offset is -1200 to +1400 (ZZ 00 to 14, XX 00 to 59), so that a hyphen not followed by one is a range hyphen.
_DT_END = r"\d{4,14}(?:\.\d{1,6})?(?:[+-](?:0\d|1[0-4])[0-5]\d)?"
_DT_VALUE = re.compile(rf"(?P<start>{_DT_END})?(?:(?P<range>-)(?P<end>{_DT_END})?)?")


def shift_dt(value: str, days: int) -> str:
    """Shift one DT value (or a multi-value, or a range ``A-B``) by ``days``, keeping the time and any ``&ZZXX``
    offset; "" when it does not parse."""
    return "\\".join(_shift_dt_value(v.strip(), days) for v in value.split("\\"))


def _shift_dt_value(value: str, days: int) -> str:
    """One DT value or DT range (PS3.5 6.2): both ends move by ``days``; "" when it does not parse."""
    match = _DT_VALUE.fullmatch(value)
    if match is None or not (match["start"] or match["end"]):
        return ""
    ends = [_shift_dt_end(match[name], days) for name in ("start", "end")]
    if "" in ends:
        return ""
    start, end = (e or "" for e in ends)
    return f"{start}-{end}" if match["range"] else start


def _shift_dt_end(value: str | None, days: int) -> str | None:
    """One end of a DT value: its date part shifted, time and offset kept; None when the end is open, "" when it
    does not parse."""
    if value is None:
        return None
    cut = len(value)
    for sign in ("+", "-"):
        i = value.find(sign, 4)
        if i != -1:
            cut = min(cut, i)
    core, zone = value[:cut], value[cut:]
    date_len = min(len(core), 8)
    shifted = _shift_date_part(core[:date_len], days)
    return shifted + core[date_len:] + zone if shifted else ""
