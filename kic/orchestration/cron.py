"""Cron expressions in the dialect of each scheduler, checked before a schedule is sent.

Kubeflow Pipelines parses its cron with robfig/cron: six fields, seconds
first. Its parser also takes five, read as SECOND MINUTE HOUR DAY MONTH, so a
Unix line such as ``0 3 * * *`` would run at minute 3 of every hour; here five
fields are an error that shows the six-field form. Vertex AI takes Unix cron:
five fields, optionally after ``TZ=`` or ``CRON_TZ=`` and an IANA time zone
(UTC otherwise). Both accept ``*``, lists, ranges, steps and month and weekday
names; ``?`` (any day) only Kubeflow Pipelines.
"""

from __future__ import annotations

import dataclasses
import re

from kic.errors import Problem

OPTION = "--cron"
_TIME_ZONE_PREFIX = re.compile(r"(?:CRON_)?TZ=(\S*)\s+")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_ITEM = re.compile(r"(?P<range>\*|\?|(?P<low>\w+)(?:-(?P<high>\w+))?)(?:/(?P<step>\d+))?")


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names of low, low+1, ... (months, weekdays)
    any_day: bool = False  # accepts "?"


@dataclasses.dataclass(frozen=True)
class Dialect:
    platform: str
    fields: tuple[Field, ...]
    example: str
    example_meaning: str
    time_zone: str  # what the expression may say about the time zone, for the error message

    @property
    def form(self) -> str:
        return " ".join(field.name.upper().replace(" ", "-") for field in self.fields)


_MINUTE, _HOUR = Field("minute", 0, 59), Field("hour", 0, 23)

KUBEFLOW = Dialect(
    platform="Kubeflow Pipelines",
    fields=(Field("second", 0, 59), _MINUTE, _HOUR, Field("day of month", 1, 31, any_day=True),
            Field("month", 1, 12, _MONTHS), Field("day of week", 0, 6, _WEEKDAYS, any_day=True)),
    example="0 0 3 * * *", example_meaning="every day at 03:00:00",
    time_zone="no time zone: the scheduler's own applies (UTC unless its CRON_SCHEDULE_TIMEZONE says otherwise)")

VERTEX = Dialect(
    platform="Vertex AI",
    fields=(_MINUTE, _HOUR, Field("day of month", 1, 31), Field("month", 1, 12, _MONTHS),
            Field("day of week", 0, 7, _WEEKDAYS)),  # 7 is Sunday too
    example="TZ=Europe/Amsterdam 0 3 * * *", example_meaning="every day at 03:00 in Amsterdam",
    time_zone="an optional TZ=AREA/CITY (or CRON_TZ=) prefix; UTC without one")


def problems(expression: str, dialect: Dialect) -> list[Problem]:
    """What is wrong with ``expression`` as a cron of ``dialect``'s platform."""
    text = " ".join(expression.split())
    zone = _TIME_ZONE_PREFIX.match(text + " ")
    if zone:
        if dialect is KUBEFLOW:
            return [_problem(expression, dialect, f"{dialect.platform} takes {dialect.time_zone}")]
        text = text[zone.end():].strip()
        if not _is_time_zone(zone.group(1)):
            return [_problem(expression, dialect, f"unknown time zone {zone.group(1)!r}: an IANA name such as "
                                                  "Europe/Amsterdam or America/New_York")]
    parts = text.split(" ") if text else []
    if len(parts) != len(dialect.fields):
        return [_problem(expression, dialect, f"got {len(parts)} fields{_suggestion(parts, dialect)}")]
    found = [reason for field, part in zip(dialect.fields, parts, strict=True)
             for reason in _field_problems(part, field)]
    return [_problem(expression, dialect, "; ".join(found))] if found else []


def _problem(expression: str, dialect: Dialect, reason: str) -> Problem:
    return Problem(OPTION, expression, f"{reason}. {dialect.platform} expects {len(dialect.fields)} fields, "
                                       f"{dialect.form}, and {dialect.time_zone}; for example "
                                       f"'{dialect.example}' ({dialect.example_meaning})")


def _suggestion(parts: list[str], dialect: Dialect) -> str:
    """The likely intended expression, when a Unix cron met the seconds dialect or the other way round."""
    if dialect is KUBEFLOW and len(parts) == 5:
        return f" (a Unix cron? with seconds first: '0 {' '.join(parts)}')"
    if dialect is VERTEX and len(parts) == 6 and parts[0] == "0":
        return f" (seconds first? without them: '{' '.join(parts[1:])}')"
    return ""


def _field_problems(part: str, field: Field) -> list[str]:
    found = []
    for item in part.split(","):
        match = _ITEM.fullmatch(item)
        if not match:
            found.append(f"{field.name} {item!r} is not a value, range (a-b), list (a,b) or step (*/n)")
            continue
        if match["range"] == "?" and not field.any_day:
            found.append(f"{field.name} cannot be '?'")
        step = match["step"]
        if step is not None and not 1 <= int(step) <= field.high:
            found.append(f"{field.name} step {step} is not between 1 and {field.high}")
        if match["low"] is None:
            continue
        values = [_value(text, field) for text in (match["low"], match["high"]) if text is not None]
        if None in values:
            allowed = f"{field.low}-{field.high}" + (f" or {field.names[0]}-{field.names[-1]}" if field.names else "")
            found.append(f"{field.name} {item!r} is out of range ({allowed})")
        elif len(values) == 2 and values[0] > values[1]:
            found.append(f"{field.name} range {item!r} runs backwards")
    return found


def _value(text: str, field: Field) -> int | None:
    if text.isdigit():
        number = int(text)
        return number if field.low <= number <= field.high else None
    if text.upper() in field.names:
        return field.low + field.names.index(text.upper())
    return None


def _is_time_zone(name: str) -> bool:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        # Without a time zone database here, the name cannot be judged: let Vertex AI judge it.
        return not zoneinfo.available_timezones()
    return True
