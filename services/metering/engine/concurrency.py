"""Concurrency over call intervals (SPEC section 5 and the interval rules of section 6).

Results depend only on each call's times, so they are computed by a sweep over
intervals, never kept as a running counter. :func:`sweep` evaluates one time range
[lo, hi) and returns, per cycle, the account peak, the peak of each capacity group, each
user's largest concurrency, the per-minute peaks of each capacity group, and the
number of calls of its capacity group already occupying when each call of the range
starts (taken in start order; over capacity when that number >= capacity). :func:`cps_max` gives the
largest number of starts in a one-second window. :func:`merge_range` folds results of an
earlier range into a later one, keeping the first instant of a tied peak.

A call occupies a port during [start, end): at an instant where one call ends and another
starts, only the starting one occupies. Calls starting at the same instant are taken in
the order of (source, id) of the event carrying the start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

MINUTE_MS = 60_000
SECOND_MS = 1_000


@dataclass(slots=True)
class Interval:
    """One non-blocked call as the sweep sees it. ``key`` orders simultaneous starts."""

    start: int
    end: int
    key: tuple[str, str]
    group: str
    user: str | None
    call_id: str


@dataclass(slots=True)
class CyclePeaks:
    """Peaks of one cycle within the swept range. (value, first instant) pairs."""

    account: tuple[int, int | None] = (0, None)
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    cps: int = 0


@dataclass(slots=True)
class SweepResult:
    cycles: dict[str, CyclePeaks] = field(default_factory=dict)
    occupied_at_start: dict[str, int] = field(default_factory=dict)
    minutes: dict[tuple[str, int], int] = field(default_factory=dict)


def sweep(
    intervals: Iterable[Interval],
    lo: int,
    hi: int,
    cycle_of: Callable[[int], str],
    next_cycle_start: Callable[[int], int],
    minutes_until: int,
) -> SweepResult:
    """Evaluate occupancy at every instant of [lo, hi).

    ``intervals`` may include calls outside the range; those ending at or before ``lo``
    or starting at or after ``hi`` are ignored. Per-minute peaks are produced for minutes
    starting before ``minutes_until`` (callers pass the watermark, so no minute beyond
    the data is reported).
    """
    res = SweepResult()
    occ_acc = 0
    occ_grp: dict[str, int] = {}
    occ_usr: dict[str, int] = {}
    # (time, kind, key, interval); kind 0 = end, 1 = start, 2 = zero-length start. Ends go
    # first at a tie; starts of both kinds in (source, id) order.
    events: list[tuple[int, int, tuple[str, str], Interval]] = []
    for iv in intervals:
        if iv.start >= hi:
            continue
        if iv.end <= iv.start:
            # a zero-length call starts (and may be over capacity) but occupies nothing
            if iv.start >= lo:
                events.append((iv.start, 2, iv.key, iv))
            continue
        if iv.end <= lo:
            continue
        if iv.start < lo:
            occ_acc += 1
            occ_grp[iv.group] = occ_grp.get(iv.group, 0) + 1
            if iv.user is not None:
                occ_usr[iv.user] = occ_usr.get(iv.user, 0) + 1
        else:
            events.append((iv.start, 1, iv.key, iv))
        if iv.end < hi:
            events.append((iv.end, 0, ("", ""), iv))
    events.sort(key=lambda e: (e[0], e[1] > 0, e[2]))

    cycles = res.cycles
    minutes = res.minutes
    occupied = res.occupied_at_start
    minute_end = min(hi, minutes_until)

    def record(t: int, groups_at: Iterable[str], users_at: Iterable[str]) -> None:
        """Peaks at instant t, for the groups and users that may have reached a new high."""
        cyc = cycles.get(c := cycle_of(t))
        if cyc is None:
            cyc = cycles[c] = CyclePeaks()
        if occ_acc > cyc.account[0]:
            cyc.account = (occ_acc, t)
        groups = cyc.groups
        for g in groups_at:
            n = occ_grp[g]
            if n and ((cur := groups.get(g)) is None or n > cur[0]):
                groups[g] = (n, t)
        users = cyc.users
        for u in users_at:
            n = occ_usr[u]
            if n > users.get(u, 0):
                users[u] = n

    def minute_at(t: int, groups_at: Iterable[str]) -> None:
        m = t - t % MINUTE_MS
        for g in groups_at:
            n = occ_grp[g]
            if n > minutes.get((g, m), 0):
                minutes[(g, m)] = n

    def carry(m_from: int, m_to: int) -> None:
        """The occupancy held between instants covers whole minutes [m_from, m_to)."""
        m_to = min(m_to, minute_end)
        if m_from >= m_to:
            return
        for g, n in occ_grp.items():
            if n:
                for m in range(m_from, m_to, MINUTE_MS):
                    if n > minutes.get((g, m), 0):
                        minutes[(g, m)] = n

    n_ev = len(events)
    i = 0
    t = lo
    boundary = next_cycle_start(lo)
    cur_minute = lo - lo % MINUTE_MS
    full = True  # first instant of the range or of a cycle: every group may be at a high
    full_minute = True  # first instant of a minute: every group's minute value is open
    touched_g: list[str] = []
    touched_u: list[str] = []
    while True:
        while i < n_ev and events[i][0] == t:
            _, kind, _, iv = events[i]
            g = iv.group
            u = iv.user
            if kind == 0:
                occ_acc -= 1
                occ_grp[g] -= 1
                if u is not None:
                    occ_usr[u] -= 1
            else:
                occupied[iv.call_id] = occ_grp.get(g, 0)
                if kind == 1:
                    occ_acc += 1
                    occ_grp[g] = occ_grp.get(g, 0) + 1
                    touched_g.append(g)
                    if u is not None:
                        occ_usr[u] = occ_usr.get(u, 0) + 1
                        touched_u.append(u)
            i += 1
        if occ_acc:
            if full:
                record(t, list(occ_grp), list(occ_usr))
            elif touched_g:
                record(t, touched_g, touched_u)
            if t < minute_end:
                minute_at(t, list(occ_grp) if full_minute else touched_g)
        touched_g.clear()
        touched_u.clear()
        nxt = events[i][0] if i < n_ev else hi
        if boundary < nxt and occ_acc:
            nxt = boundary
        if nxt >= hi:
            carry(cur_minute + MINUTE_MS, hi)
            break
        nxt_minute = nxt - nxt % MINUTE_MS
        full_minute = nxt_minute > cur_minute
        if full_minute:
            # instants [nxt_minute, nxt) of the next event's minute hold the old occupancy
            carry(cur_minute + MINUTE_MS, nxt_minute + (MINUTE_MS if nxt > nxt_minute else 0))
            cur_minute = nxt_minute
        full = boundary <= nxt
        while boundary <= nxt:
            boundary = next_cycle_start(boundary)
        t = nxt
    return res


def cps_max(starts: list[int], lo: int, hi: int, cycle_of: Callable[[int], str]) -> dict[str, int]:
    """Per cycle, the most starts in a window [t, t+1 s) with t a start in [lo, hi).

    ``starts`` must be sorted and include every start in [lo, hi + 1 s). Only starts of
    the window's own cycle count.
    """
    out: dict[str, int] = {}
    n = len(starts)
    j = 0
    for i in range(n):
        t = starts[i]
        if t < lo:
            continue
        if t >= hi:
            break
        j = max(j, i)
        while j < n and starts[j] < t + SECOND_MS:
            j += 1
        c = cycle_of(t)
        count = j - i
        if count > 1 and cycle_of(starts[j - 1]) != c:
            count = sum(1 for k in range(i, j) if cycle_of(starts[k]) == c)
        if count > out.get(c, 0):
            out[c] = count
    return out


def merge_range(earlier: CyclePeaks, later: CyclePeaks) -> CyclePeaks:
    """Combine the peaks of two consecutive ranges of one cycle (ties keep the earlier)."""
    acc = later.account if later.account[0] > earlier.account[0] else earlier.account
    groups = dict(earlier.groups)
    for g, v in later.groups.items():
        if g not in groups or v[0] > groups[g][0]:
            groups[g] = v
    users = dict(earlier.users)
    for u, n in later.users.items():
        if n > users.get(u, 0):
            users[u] = n
    return CyclePeaks(acc, groups, users, max(earlier.cps, later.cps))
