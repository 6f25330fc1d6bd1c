"""Date shifting for the Retain Longitudinal Temporal Information with Modified Dates Option (PS3.15 E.3.6).

Every date of one patient moves by the same whole number of days, so intervals between a patient's studies and
ages computed from shifted dates stay what they were. DA values (``YYYYMMDD``, PS3.5 6.2) and the date part of DT
values (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``) are shifted; the time of day and the DT time zone offset (``&ZZXX``) are
kept as they are. Partial dates (``YYYY``, ``YYYYMM``) are shifted from their first day and written back with the
same precision. A value that does not parse is replaced by the empty value (never kept).
"""

from __future__ import annotations

import datetime as dt


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


def shift_dt(value: str, days: int) -> str:
    """Shift one DT value (or a multi-value) by ``days``, keeping the time and any ``&ZZXX`` offset."""
    out = []
    for v in value.split("\\"):
        v = v.strip()
        if not v:
            out.append("")
            continue
        cut = len(v)
        for sign in ("+", "-"):
            i = v.find(sign, 4)
            if i != -1:
                cut = min(cut, i)
        core, zone = v[:cut], v[cut:]
        date_len = min(len(core), 8)
        shifted = _shift_date_part(core[:date_len], days)
        out.append(shifted + core[date_len:] + zone if shifted else "")
    return "\\".join(out)
