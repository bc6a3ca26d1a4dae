"""Calendar arithmetic in an account's IANA time zone (SPEC sections 1 and 4).

All instants are UTC epoch milliseconds. A :class:`Calendar` caches the last cycle and
the last local day it resolved, so the common case (events close in time) costs two
integer comparisons.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from metering.events.decode import EPOCH, to_ms

DAY_MS = 86_400_000


class Calendar:
    """Cycles (``YYYY-MM``) and local days of one time zone."""

    __slots__ = ("_cycle", "_cycle_end", "_cycle_start", "_day_end", "_day_start", "tz", "tzname")

    def __init__(self, tzname: str) -> None:
        self.tzname = tzname
        self.tz = ZoneInfo(tzname)
        self._cycle = ""
        self._cycle_start = 1
        self._cycle_end = 0
        self._day_start = 1
        self._day_end = 0

    def _local(self, ms: int) -> datetime:
        return (EPOCH + timedelta(milliseconds=ms)).astimezone(self.tz)

    def _midnight(self, d: date) -> int:
        return to_ms(datetime(d.year, d.month, d.day, tzinfo=self.tz).astimezone(UTC))

    def cycle_of(self, ms: int) -> str:
        """The billing cycle holding instant ``ms``."""
        if self._cycle_start <= ms < self._cycle_end:
            return self._cycle
        local = self._local(ms)
        cycle = f"{local.year:04d}-{local.month:02d}"
        start, end = self.cycle_bounds(cycle)
        self._cycle, self._cycle_start, self._cycle_end = cycle, start, end
        return cycle

    def cycle_bounds(self, cycle: str) -> tuple[int, int]:
        """[start, end) of a cycle: local midnight of its first day to the next month's."""
        year, month = int(cycle[:4]), int(cycle[5:7])
        nxt = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
        return self._midnight(date(year, month, 1)), self._midnight(nxt)

    def next_cycle_start(self, ms: int) -> int:
        """Start of the cycle after the one holding ``ms``."""
        self.cycle_of(ms)
        return self._cycle_end

    def deadline(self, origin: int) -> int:
        """End of the origin's local calendar day plus 24 absolute hours (SPEC section 4)."""
        if not self._day_start <= origin < self._day_end:
            d = self._local(origin).date()
            self._day_start = self._midnight(d)
            self._day_end = self._midnight(d + timedelta(days=1))
        return self._day_end + DAY_MS


_CALENDARS: dict[str, Calendar] = {}


def calendar_for(tzname: str) -> Calendar:
    """A shared calendar per zone (caches are per zone, so sharing is safe)."""
    cal = _CALENDARS.get(tzname)
    if cal is None:
        cal = _CALENDARS[tzname] = Calendar(tzname)
    return cal
