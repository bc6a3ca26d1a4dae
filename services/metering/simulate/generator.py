"""Sample traffic generator: a realistic, deterministic JSON-lines log of input events.

``python -m metering.simulate.generator --out events.jsonl.gz --accounts-out accounts.yaml``
(wired as ``metering simulate``).

How it works
------------
A discrete-event simulation over one time-ordered heap of *actions* (arrivals of new
calls / conversations / SmartFlow executions, port releases, the next burst of a
conversation, the starts of a dialer burst). Arrivals are Poisson with a rate that is
constant within each UTC hour and follows a diurnal pattern in the account's time zone.
When an action produces events (at its own time or later: a call's answer and end are
known when it starts), each event gets an *arrival key* ``time + delay`` with
``0 <= delay < 0.9 x lateness`` and goes into a second heap; lines leave that heap in
arrival-key order as soon as no later action can produce an earlier key. Memory is
bounded by the number of calls and conversations in progress, not by the log size.

Traffic: per account (see :mod:`metering.simulate.accounts` for the profiles) voice calls
(lifecycle events, or one CDR for ``cdr_share`` of them; blocked when the capacity group
is full, 10% of those let through over capacity; a few conference calls and 1-3.5 h
bridges), a dialer account's bursts of outbound calls (up to a few hundred starts within
about two seconds), messaging conversations (bursts of messages in both directions, some
resumed hours or days later; simulated from 60 h before the start so the window opens on
conversations under way) and SmartFlow executions on every channel, messaging ones on
conversations already in the log, some followed by ``nlp.used``.

Guarantees (checked by ``tests/test_simulate.py``)
--------------------------------------------------
* Same :class:`SimulationConfig` (and accounts object) -> same bytes. One seeded
  ``random.Random``; no wall clock.
* Disorder is bounded: when a valid line is emitted, every line emitted before it has
  an event time < its time + 0.9 x lateness (so it is strictly within the allowed
  lateness of its account's watermark). Duplicates obey the same bound.
* A duplicate is a byte-identical copy of an earlier line.
* Malformed lines are *extra* lines (no valid event is lost): truncated JSON, binary
  garbage, missing fields, bad enum values, a time without offset, a messaging
  SmartFlow without addresses, unknown types (``call.transferred``...).
* One call is described by lifecycle events or by one CDR, except the deliberate
  ``double_report_rate`` share of lifecycle calls that a mediation system also reports
  as a CDR (the engine dead-letters those CDRs as ``duplicate_call``).
* Orphans (``orphan_rate``): lifecycle calls whose ``call.started`` is never sent.
"""

from __future__ import annotations

import argparse
import gzip
import heapq
import io
import math
import queue
import random
import sys
import threading
import time as _time
from bisect import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from metering.simulate.accounts import (
    LONG_CALL_RATE,
    MEAN_MESSAGES_PER_CONVERSATION,
    MEAN_NLP_PER_NLP_EXECUTION,
    MSG_WEEKDAY,
    MSG_WEEKEND,
    VOICE_WEEKDAY,
    AccountProfile,
    account_budget,
    expected_calls,
    hour_weights,
    load_accounts,
    make_accounts,
    make_profile,
    trunk_traffic,
    write_accounts,
)
from metering.simulate.config import (
    HOUR_MS,
    MAX_CALL_DURATION_MS,
    MINUTE_MS,
    SimulationConfig,
    SimulationSummary,
)

__all__ = [
    "SimulationConfig",
    "SimulationSummary",
    "add_arguments",
    "iter_events",
    "main",
    "make_accounts",
    "run_cli",
    "write_accounts",
    "write_log",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# ---------------------------------------------------------------------------------------
# Time formatting (hot path): RFC 3339 with milliseconds, cached per minute and offset.

_MINUTE_PREFIX: dict[int, str] = {}


def _minute_prefix(minute: int) -> str:
    p = _MINUTE_PREFIX.get(minute)
    if p is None:
        p = (_EPOCH + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:")
        if len(_MINUTE_PREFIX) > 2_000_000:
            _MINUTE_PREFIX.clear()
        _MINUTE_PREFIX[minute] = p
    return p


def fmt_z(ms: int) -> str:
    """``2026-10-30T12:34:56.789Z``."""
    p = _MINUTE_PREFIX.get(ms // MINUTE_MS) or _minute_prefix(ms // MINUTE_MS)
    s = ms % MINUTE_MS
    return f"{p}{s // 1000:02d}.{s % 1000:03d}Z"


class LocalTimeFormatter:
    """Times in one IANA zone's local offset, e.g. ``2026-10-30T06:34:56.789-06:00``.

    Offsets are cached per 15-minute UTC bucket (every real zone changes offset on a
    quarter hour).
    """

    __slots__ = ("_offsets", "_zone")

    def __init__(self, tz: str) -> None:
        self._zone = ZoneInfo(tz)
        self._offsets: dict[int, tuple[int, str]] = {}

    def _offset(self, bucket: int) -> tuple[int, str]:
        delta = datetime.fromtimestamp(bucket * 900, tz=UTC).astimezone(self._zone).utcoffset()
        off = (delta or timedelta(0)) // timedelta(milliseconds=1)
        sign = "-" if off < 0 else "+"
        m = abs(off) // MINUTE_MS
        entry = (off, f"{sign}{m // 60:02d}:{m % 60:02d}")
        self._offsets[bucket] = entry
        return entry

    def __call__(self, ms: int) -> str:
        b = ms // 900_000
        entry = self._offsets.get(b) or self._offset(b)
        lm = ms + entry[0]
        p = _MINUTE_PREFIX.get(lm // MINUTE_MS) or _minute_prefix(lm // MINUTE_MS)
        s = lm % MINUTE_MS
        return f"{p}{s // 1000:02d}.{s % 1000:03d}{entry[1]}"


# ---------------------------------------------------------------------------------------
# Event sources: name, id format, time format.

_TIME_LOCAL, _TIME_Z, _TIME_PLUS0, _TIME_MICRO = range(4)
_MASK128 = (1 << 128) - 1
_MULT128 = 0x9E3779B97F4A7C15F39CC0605CEDC835  # odd, so multiplying by it is a bijection
_MULT128B = 0xD6E8FEB86659FD93C5A5A5A5A5A5A5A5 | 1


class _Source:
    __slots__ = ("content_type", "id_style", "key", "n", "name", "time_style")

    def __init__(
        self, name: str, id_style: str, time_style: int, key: int, content_type: bool
    ) -> None:
        self.name = name
        self.id_style = id_style
        self.time_style = time_style
        self.key = key
        self.content_type = content_type
        self.n = 0

    def next_id(self) -> str:
        self.n += 1
        n = self.n
        style = self.id_style
        if style == "uuid":
            # A bijection of n (odd multiplications and xor-shifts), so ids never repeat.
            x = (n * _MULT128 + self.key) & _MASK128
            x ^= x >> 61
            x = (x * _MULT128B) & _MASK128
            x ^= x >> 67
            h = f"{x:032x}"
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        if style == "num":
            return f"{n:012d}"
        return f"{style}{n:x}"


# ---------------------------------------------------------------------------------------
# Reference data.

_STATES: tuple[tuple[str, float], ...] = (
    ("CA", 12), ("TX", 9), ("FL", 6.5), ("NY", 6), ("PA", 4), ("IL", 4), ("OH", 3.5),
    ("GA", 3.2), ("NC", 3.2), ("MI", 3), ("NJ", 2.8), ("VA", 2.6), ("WA", 2.3),
    ("AZ", 2.2), ("MA", 2.1), ("TN", 2.1), ("IN", 2), ("MO", 1.9), ("MD", 1.9),
    ("WI", 1.8), ("CO", 1.8), ("MN", 1.7), ("SC", 1.6), ("AL", 1.5), ("LA", 1.4),
    ("KY", 1.4), ("OR", 1.3), ("OK", 1.2), ("CT", 1.1), ("UT", 1), ("IA", 1), ("NV", 1),
    ("AR", 0.9), ("MS", 0.9), ("KS", 0.9), ("NM", 0.6), ("NE", 0.6), ("ID", 0.6),
    ("WV", 0.5), ("NH", 0.4), ("ME", 0.4), ("MT", 0.3), ("RI", 0.3), ("DE", 0.3),
    ("SD", 0.3), ("ND", 0.2), ("VT", 0.2), ("WY", 0.2), ("DC", 0.2), ("PR", 0.9),
    ("GU", 0.05), ("VI", 0.05),
)  # fmt: skip
_STATE_NAMES = tuple(s for s, _ in _STATES)
_STATE_CUM: list[float] = []
for _s, _w in _STATES:
    _STATE_CUM.append((_STATE_CUM[-1] if _STATE_CUM else 0.0) + _w)
_NPAS = (201, 206, 210, 212, 214, 215, 216, 303, 305, 312, 313, 404, 406, 412, 415, 469,
         503, 512, 602, 615, 617, 702, 704, 713, 720, 801, 813, 816, 832, 904, 919, 972)  # fmt: skip
_INTL = ("+44207", "+52155", "+91224", "+49301", "+33142", "+61290", "+81352", "+63288")
_TOLL_FREE = ("+1800", "+1888", "+1877", "+1866", "+1855", "+1844", "+1833")
_OTHER_CARRIERS = ("ilec", "clec", "wireless", "unknown")
_MSG_FAMILIES = ("sms", "whatsapp", "facebook")
_FAMILY_CUM = (0.55, 0.85, 1.0)
# SmartFlow channels and their cumulative weights.
_FLOW_CHANNELS = ("voice", "api", "sms", "mms", "whatsapp", "facebook")
_FLOW_CUM = (0.30, 0.52, 0.77, 0.80, 0.94, 1.0)
_MALFORMED_KINDS = (
    "truncated",
    "garbage",
    "missing_field",
    "bad_enum",
    "naive_time",
    "unknown_type",
)
_UNKNOWN_TYPES = ("call.transferred", "call.held", "message.deleted", "smartflow.completed")
_REQUIRED: dict[str, tuple[str, ...]] = {
    "call.started": ("call_id", "trunk_group", "direction", "route_class"),
    "call.answered": ("call_id",),
    "call.ended": ("call_id",),
    "call.completed": ("call_id", "started_at", "ended_at", "route_class"),
    "message.sent": ("message_id", "channel", "business_address", "remote_address"),
    "message.received": ("message_id", "channel", "remote_address"),
    "smartflow.triggered": ("execution_id", "flow_id", "channel"),
    "nlp.used": ("execution_id", "kind"),
}
_BAD_ENUMS: dict[str, tuple[str, str]] = {
    "call.started": ("route_class", "premium"),
    "call.completed": ("direction", "sideways"),
    "message.sent": ("channel", "telegram"),
    "message.received": ("channel", "rcs"),
    "smartflow.triggered": ("channel", "email"),
    "nlp.used": ("kind", "image"),
}

CONVERSATION_WARMUP_HOURS = 60
"""Conversations are simulated from this long before the start, their messages before it
unsent: the window opens on conversations already under way (steady state), which also
makes up for the follow-up bursts cut off at its end."""

# Action kinds of the simulation heap.
_OP_RELEASE, _OP_SPAWN, _OP_TICK, _OP_BURST, _OP_CALL = range(5)
_K_CALL, _K_CONV, _K_FLOW, _K_DIALER, _K_BRIDGE = range(5)
BRIDGES_PER_DAY = 4.0
"""Long calls (1 to 3.5 hours: conference bridges, monitoring lines) per account and day,
at any hour: they keep some ports busy at night and across cycle boundaries."""


class _Group:
    """A capacity group: a trunk group plus the groups redundant for it."""

    __slots__ = ("capacity", "occupied")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.occupied = 0


class _Conv:
    __slots__ = ("acct", "business", "family", "listed", "notify", "remote", "source")

    def __init__(
        self, acct: _Acct, family: str, business: str, remote: str, source: _Source, notify: bool
    ) -> None:
        self.acct = acct
        self.family = family
        self.business = business
        self.remote = remote
        self.source = source
        self.notify = notify
        self.listed = False  # in its account's recent conversations (SmartFlows pick those)


class _Acct:
    """Per-account state of a run."""

    def __init__(
        self,
        index: int,
        account_id: str,
        obj: Mapping[str, Any],
        profile: AccountProfile,
        cfg: SimulationConfig,
        budget: float,
        rng: random.Random,
    ) -> None:
        self.index = index
        self.id = account_id
        self.tz = str(obj.get("timezone") or "UTC")
        self.profile = profile
        self.local = LocalTimeFormatter(self.tz)
        west = self.tz in (
            "America/Denver",
            "America/Los_Angeles",
            "America/Phoenix",
            "America/Anchorage",
            "Pacific/Honolulu",
        )
        region = "us-west-2" if west else "us-east-1"
        self.pbx_region = region

        # Trunk groups: traffic shares and capacity groups.
        conf: Mapping[str, Mapping[str, Any]] = obj.get("trunk_groups") or {}
        groups: dict[str, _Group] = {}
        for tg, c in conf.items():
            cap = c.get("capacity")
            if c.get("redundant_for") is None and cap is not None:
                groups[tg] = _Group(int(cap))
        self.trunks: list[str] = []
        self.trunk_cum: list[float] = []
        self.trunk_group: list[_Group | None] = []
        acc = 0.0
        for tg, share in trunk_traffic(obj, profile):
            owner = tg
            tg_conf = conf.get(tg)
            if tg_conf is not None and tg_conf.get("redundant_for") is not None:
                owner = str(tg_conf["redundant_for"])
            acc += share
            self.trunks.append(tg)
            self.trunk_cum.append(acc)
            self.trunk_group.append(groups.get(owner))
        self.trunk_cum[-1] = 1.0
        self.lca = [f"LCA-{profile.npas[0]}-{k + 1}" for k in range(len(self.trunks) + 4)]

        npas = profile.npas
        self.dids = [
            f"+1{rng.choice(npas)}{rng.randrange(2_000_000, 10_000_000)}" for _ in range(12)
        ]
        self.toll_free_dids = [
            f"{rng.choice(_TOLL_FREE)}{rng.randrange(2_000_000, 10_000_000)}" for _ in range(2)
        ]
        self.users = [f"u-{index + 1}-{k + 1}" for k in range(profile.users)]
        self.business: dict[str, list[str]] = {
            "sms": self.dids[: 2 + index % 3],
            "whatsapp": self.dids[5 : 5 + 1 + index % 2],
            "facebook": [f"fb:page:{rng.randrange(10**14, 10**15)}"],
        }
        self.flow_ids = [f"flow-{index + 1}-{k + 1}" for k in range(3 + index % 5)]
        self.recent: dict[str, list[_Conv]] = {f: [] for f in _MSG_FAMILIES}
        self.recent_pos: dict[str, int] = dict.fromkeys(_MSG_FAMILIES, 0)
        self.returning: list[tuple[str, str]] = []  # (family, remote) of past conversations

        # Arrival rates per UTC hour of the window, per millisecond.
        vw, vlen = hour_weights(cfg, self.tz, *profile.voice_pattern)
        mw, mlen = hour_weights(cfg, self.tz, MSG_WEEKDAY, MSG_WEEKEND, CONVERSATION_WARMUP_HOURS)
        calls = expected_calls(cfg, profile, budget)
        convs = budget * profile.msg_share / MEAN_MESSAGES_PER_CONVERSATION
        flows = budget * profile.flow_share / (1 + profile.nlp_prob * MEAN_NLP_PER_NLP_EXECUTION)
        dialer_per_day = 1.5 if profile.dialer else 0.0
        vlen = max(vlen, 1e-9)
        mlen = max(mlen, 1e-9)
        self.rates: list[list[float]] = [
            [calls * w / vlen / HOUR_MS for w in vw],
            [convs * w / mlen / HOUR_MS for w in mw],
            [flows * w / vlen / HOUR_MS for w in vw],
            [dialer_per_day * w / sum(VOICE_WEEKDAY) / HOUR_MS for w in vw],
            [BRIDGES_PER_DAY / 24 / HOUR_MS] * len(vw),
        ]
        first_hour = cfg.start_ms // HOUR_MS * HOUR_MS
        self.rate_origin = [
            first_hour,
            first_hour - CONVERSATION_WARMUP_HOURS * HOUR_MS,
            first_hour,
            first_hour,
            first_hour,
        ]
        self.burst_size = (40, 220) if calls / max(cfg.days, 1e-9) >= 2_000 else (8, 40)


# ---------------------------------------------------------------------------------------


class _Simulation:
    def __init__(
        self, cfg: SimulationConfig, accounts: Mapping[str, Any], summary: SimulationSummary
    ) -> None:
        self.cfg = cfg
        self.summary = summary
        self.rng = random.Random(f"simulate:{cfg.seed}")
        objs: Mapping[str, Mapping[str, Any]] = accounts.get("accounts") or {}
        profiles = [
            make_profile(cfg, i, a, str(o.get("timezone") or "UTC"))
            for i, (a, o) in enumerate(objs.items())
        ]
        budgets = account_budget(cfg, profiles) if profiles else []
        self.accounts = [
            _Acct(i, a, o, profiles[i], cfg, budgets[i], self.rng)
            for i, (a, o) in enumerate(objs.items())
        ]
        key = self.rng.getrandbits(128)
        self.sources: dict[str, _Source] = {}
        for name, style, tstyle, ct in (
            ("//pbx/us-east-1", "num", _TIME_LOCAL, True),
            ("//pbx/us-west-2", "num", _TIME_LOCAL, True),
            ("//cdr/mediation", "cdr-", _TIME_Z, False),
            ("//msg-gw/sms", "uuid", _TIME_Z, False),
            ("//msg-gw/whatsapp", "wamid.", _TIME_PLUS0, False),
            ("//msg-gw/facebook", "mid.", _TIME_Z, False),
            ("//flows/us-east-1", "uuid", _TIME_LOCAL, True),
            ("//nlp/us-east-1", "nlp-", _TIME_MICRO, False),
        ):
            self.sources[name] = _Source(
                name, style, tstyle, (key + 7919 * len(self.sources)) & _MASK128, ct
            )
        self.src_cdr = self.sources["//cdr/mediation"]
        self.src_flow = self.sources["//flows/us-east-1"]
        self.src_nlp = self.sources["//nlp/us-east-1"]
        self.msg_src = {
            "sms": self.sources["//msg-gw/sms"],
            "whatsapp": self.sources["//msg-gw/whatsapp"],
            "facebook": self.sources["//msg-gw/facebook"],
        }
        self.actions: list[tuple[int, int, int, int, Any, int]] = []
        self.arrivals: list[tuple[int, int, bytes]] = []
        self.seq = 0
        self.n_calls = 0
        self.n_msgs = 0
        self.n_exec = 0
        self.max_delay = cfg.max_delay_ms
        self.jitter = max(1, min(cfg.jitter_ms, self.max_delay))
        self.tmin = 1 << 62
        self.tmax = -(1 << 62)
        self.start = cfg.start_ms
        self.end = cfg.end_ms

    # -- scheduling ---------------------------------------------------------------------

    def _schedule(self, t: int, op: int, obj: Any, arg: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.actions, (t, 0 if op == _OP_RELEASE else 1, self.seq, op, obj, arg))

    def _push(self, t: int, event: dict[str, Any]) -> None:
        """Queue one valid event (and maybe a duplicate and a malformed variant)."""
        line = orjson.dumps(event)
        rnd = self.rng.random
        cfg = self.cfg
        if rnd() < cfg.late_share:
            key = t + int(rnd() * self.max_delay)
        else:
            key = t + int(rnd() * self.jitter)
        self.seq += 1
        heapq.heappush(self.arrivals, (key, self.seq, line))
        s = self.summary
        s.events += 1
        s.by_type[event["type"]] += 1
        if t < self.tmin:
            self.tmin = t
        if t > self.tmax:
            self.tmax = t
        if rnd() < cfg.duplicate_rate:
            key2 = key + int(rnd() * (t + self.max_delay - key))
            self.seq += 1
            heapq.heappush(self.arrivals, (key2, self.seq, line))
            s.duplicates += 1
        if rnd() < cfg.malformed_rate:
            bad, kind = self._malform(event, line)
            self.seq += 1
            heapq.heappush(self.arrivals, (key, self.seq, bad))
            s.malformed += 1
            s.malformed_by_kind[kind] += 1

    def _malform(self, event: dict[str, Any], line: bytes) -> tuple[bytes, str]:
        rng = self.rng
        kind = rng.choice(_MALFORMED_KINDS)
        etype = event["type"]
        if kind == "bad_enum" and etype not in _BAD_ENUMS:
            kind = "missing_field"
        if kind == "truncated":
            return line[: rng.randrange(1, len(line) - 1)], kind
        if kind == "garbage":
            return line[: rng.randrange(1, len(line) // 2)] + b"\xff\xfe\x00" + bytes(
                [rng.randrange(128, 256)]
            ), kind
        bad = dict(event)
        bad["id"] = f"{event['id']}-x"
        data = dict(event["data"])
        bad["data"] = data
        if kind == "missing_field":
            if etype == "smartflow.triggered" and "remote_address" in data:
                del data["remote_address"]  # a messaging flow needs both addresses
            elif rng.random() < 0.3:
                del bad[rng.choice(("time", "subject", "specversion", "data"))]
            else:
                del data[rng.choice(_REQUIRED[etype])]
        elif kind == "bad_enum":
            fld, value = _BAD_ENUMS[etype]
            data[fld] = value
        elif kind == "naive_time":
            bad["time"] = fmt_z(1000 * (self.tmax // 1000))[:19]
        else:
            bad["type"] = rng.choice(_UNKNOWN_TYPES)
        return orjson.dumps(bad), kind

    def _envelope(
        self, src: _Source, acct: _Acct, t: int, etype: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        style = src.time_style
        if style == _TIME_LOCAL:
            ts = acct.local(t)
        elif style == _TIME_Z:
            ts = fmt_z(t)
        elif style == _TIME_PLUS0:
            ts = fmt_z(t)[:-1] + "+00:00"
        else:
            ts = f"{fmt_z(t)[:-1]}{self.rng.randrange(1000):03d}Z"
        ev: dict[str, Any] = {
            "specversion": "1.0",
            "id": src.next_id(),
            "source": src.name,
            "type": etype,
            "time": ts,
            "subject": acct.id,
        }
        if src.content_type:
            ev["datacontenttype"] = "application/json"
        ev["data"] = data
        return ev

    # -- calls --------------------------------------------------------------------------

    def _call(self, t: int, acct: _Acct, mode: int) -> None:
        """One call starting at ``t`` (mode: _K_CALL, _K_DIALER or _K_BRIDGE)."""
        dialer = mode == _K_DIALER
        rng = self.rng
        rnd = rng.random
        p = acct.profile
        cfg = self.cfg
        s = self.summary
        self.n_calls += 1
        s.calls += 1
        call_id = f"c{acct.index + 1}-{self.n_calls:08x}"
        k = bisect(acct.trunk_cum, rnd())
        if k >= len(acct.trunks):
            k = len(acct.trunks) - 1
        tg = acct.trunks[k]
        group = acct.trunk_group[k]

        outbound = dialer or rnd() < p.outbound_share
        r = rnd()
        if outbound:
            if dialer:
                route = "local" if r < 0.6 else "domestic_ld"
            elif r < p.international_out:
                route = "international"
            elif r < p.international_out + 0.02:
                route = "toll_free"
            elif r < 0.55:
                route = "local"
            else:
                route = "domestic_ld"
        elif r < p.toll_free_in:
            route = "toll_free"
        elif r < p.toll_free_in + 0.02:
            route = "international"
        elif r < 0.55:
            route = "local"
        else:
            route = "domestic_ld"

        # Far end.
        region: str | None
        if route == "local":
            region = p.home_state
            far = f"+1{p.npas[int(rnd() * len(p.npas))]}{rng.randrange(2_000_000, 10_000_000)}"
        elif route == "domestic_ld":
            if rnd() < p.ak_hi_share:
                region, npa = ("AK", 907) if rnd() < 0.5 else ("HI", 808)
            else:
                region = _STATE_NAMES[bisect(_STATE_CUM, rnd() * _STATE_CUM[-1])]
                npa = _NPAS[int(rnd() * len(_NPAS))]
            far = f"+1{npa}{rng.randrange(2_000_000, 10_000_000)}"
        elif route == "toll_free":
            region = (
                _STATE_NAMES[bisect(_STATE_CUM, rnd() * _STATE_CUM[-1])] if not outbound else None
            )
            far = f"+1{_NPAS[int(rnd() * len(_NPAS))]}{rng.randrange(2_000_000, 10_000_000)}"
        else:
            region = None
            far = f"{_INTL[int(rnd() * len(_INTL))]}{rng.randrange(1_000_000, 10_000_000)}"
        if route == "toll_free":
            if outbound:
                frm, to = (
                    acct.dids[int(rnd() * len(acct.dids))],
                    f"{_TOLL_FREE[int(rnd() * len(_TOLL_FREE))]}{rng.randrange(2_000_000, 10_000_000)}",
                )
            else:
                frm, to = far, acct.toll_free_dids[int(rnd() * len(acct.toll_free_dids))]
        elif outbound:
            frm, to = acct.dids[int(rnd() * len(acct.dids))], far
        else:
            frm, to = far, acct.dids[int(rnd() * len(acct.dids))]

        r = rnd()
        if route == "international":
            carrier = "unknown" if r < 0.5 else "itoc"
        elif r < p.rboc_share:
            carrier = "rboc"
        elif r < p.rboc_share + (1 - p.rboc_share) * 0.55:
            carrier = "itoc"
        else:
            carrier = _OTHER_CARRIERS[int(rnd() * 4)]

        data: dict[str, Any] = {
            "call_id": call_id,
            "trunk_group": tg,
            "direction": "outbound" if outbound else "inbound",
            "route_class": route,
        }
        if not dialer and rnd() < p.user_share:
            data["user"] = acct.users[int(len(acct.users) * rnd() ** 2)]
        data["from"] = frm
        data["to"] = to
        if region is not None:
            data["region"] = region
        if carrier != "unknown" or rnd() < 0.5:
            data["carrier_class"] = carrier
        if route == "local" and rnd() < 0.97:
            data["local_calling_area"] = (
                acct.lca[k] if rnd() < p.lca_concentration else acct.lca[int(rnd() * len(acct.lca))]
            )

        # Ports.
        blocked = False
        if group is not None and group.occupied >= group.capacity:
            if rnd() < 0.9:
                blocked = True
                s.blocked_calls += 1
            else:
                s.over_capacity_calls += 1
        cdr = rnd() < cfg.cdr_share
        orphan = not cdr and not blocked and rnd() < cfg.orphan_rate

        answered: int | None = None
        if blocked:
            end: int | None = t + 20 + int(rnd() * 400)
            data["blocked"] = True
        else:
            if acct.pbx_region == "us-east-1" and not cdr:
                data["blocked"] = False
            bridge = mode == _K_BRIDGE
            if bridge or rnd() < (p.answer_out if outbound else p.answer_in) * (
                0.6 if dialer else 1.0
            ):
                answered = t + 2_000 + int(rnd() * 23_000)
                if dialer:
                    talk = int(rng.lognormvariate(10.3, 0.8))  # ~30 s
                elif bridge:
                    talk = HOUR_MS + int(rnd() * 2.5 * HOUR_MS)  # bridge / monitoring line
                elif rnd() < LONG_CALL_RATE:
                    talk = 20 * MINUTE_MS + int(rnd() * 100 * MINUTE_MS)  # conference call
                else:
                    talk = int(rng.lognormvariate(math.log(p.talk_median_ms), p.talk_sigma))
                if cdr and rnd() < cfg.long_cdr_rate:
                    talk = MAX_CALL_DURATION_MS + 60_000 + int(rnd() * 2 * HOUR_MS)
                    s.long_cdrs += 1
                end = answered + max(talk, 1_000)
                if not cdr and rnd() < cfg.no_end_rate:
                    end = None
                    s.no_end_calls += 1
            else:
                end = t + 8_000 + int(rnd() * 37_000)
            if group is not None and not orphan:
                group.occupied += 1
                release = (
                    t + MAX_CALL_DURATION_MS if end is None else min(end, t + MAX_CALL_DURATION_MS)
                )
                self._schedule(release, _OP_RELEASE, group)

        if cdr:
            s.cdr_calls += 1
            assert end is not None
            self._cdr(acct, data, t, answered, end)
            return
        src = self.sources[f"//pbx/{acct.pbx_region}"]
        if orphan:
            s.orphans += 1
        else:
            self._push(t, self._envelope(src, acct, t, "call.started", data))
        if answered is not None:
            self._push(
                answered, self._envelope(src, acct, answered, "call.answered", {"call_id": call_id})
            )
        if end is not None:
            self._push(end, self._envelope(src, acct, end, "call.ended", {"call_id": call_id}))
            if not orphan and rnd() < cfg.double_report_rate:
                s.double_reported += 1
                self._cdr(acct, dict(data), t, answered, end)

    def _cdr(
        self, acct: _Acct, data: dict[str, Any], start: int, answered: int | None, end: int
    ) -> None:
        data["started_at"] = fmt_z(start)
        data["answered_at"] = None if answered is None else fmt_z(answered)
        data["ended_at"] = fmt_z(end)
        self._push(end, self._envelope(self.src_cdr, acct, end, "call.completed", data))

    def _dialer_burst(self, t: int, acct: _Acct) -> None:
        rng = self.rng
        lo, hi = acct.burst_size
        n = rng.randint(lo, hi)
        span = 800 + int(rng.random() * 1_700)
        for off in sorted(int(rng.random() * span) for _ in range(n)):
            self._schedule(t + off, _OP_CALL, acct, _K_DIALER)

    # -- messaging ----------------------------------------------------------------------

    def _conversation(self, t: int, acct: _Acct) -> None:
        rng = self.rng
        rnd = rng.random
        r = rnd()
        family = _MSG_FAMILIES[0 if r < _FAMILY_CUM[0] else 1 if r < _FAMILY_CUM[1] else 2]
        biz = acct.business[family]
        business = biz[int(rnd() * len(biz))]
        remote = None
        if acct.returning and rnd() < 0.3:
            fam, rem = acct.returning[int(rnd() * len(acct.returning))]
            if fam == family:
                remote = rem
        if remote is None:
            if family == "facebook":
                remote = f"fb:psid:{rng.randrange(10**15, 10**16)}"
            else:
                remote = f"+1{_NPAS[int(rnd() * len(_NPAS))]}{rng.randrange(2_000_000, 10_000_000)}"
            if len(acct.returning) < 400:
                acct.returning.append((family, remote))
            else:
                acct.returning[int(rnd() * 400)] = (family, remote)
        conv = _Conv(acct, family, business, remote, self.msg_src[family], rnd() < 0.18)
        if t >= self.start:
            self.summary.conversations += 1
        self._burst(t, conv)

    def _list(self, conv: _Conv) -> None:
        """Make a conversation with a message in the log available to SmartFlows."""
        conv.listed = True
        acct = conv.acct
        family = conv.family
        recent = acct.recent[family]
        if len(recent) < 64:
            recent.append(conv)
        else:
            pos = acct.recent_pos[family]
            recent[pos] = conv
            acct.recent_pos[family] = (pos + 1) % 64

    def _burst(self, t: int, conv: _Conv) -> None:
        rng = self.rng
        rnd = rng.random
        acct = conv.acct
        if conv.notify:
            n = 1
            inbound = False
        else:
            n = 1 + int(math.log(1.0 - rnd()) / math.log(2.9 / 3.9))
            inbound = rnd() < 0.6
        ti = t
        for i in range(min(n, 40)):
            if i:
                ti += min(600_000, 2_000 + int(rng.lognormvariate(10.3, 1.0)))
                if rnd() < 0.75:
                    inbound = not inbound
            fam = conv.family
            channel = "mms" if fam == "sms" and rnd() < 0.12 else fam
            if ti < self.start:
                continue  # warm-up: the message is before the window
            self.n_msgs += 1
            data: dict[str, Any] = {
                "message_id": f"M{acct.index + 1}x{self.n_msgs:09d}",
                "channel": channel,
                "business_address": conv.business,
                "remote_address": conv.remote,
            }
            if channel == "sms":
                r = rnd()
                data["segments"] = 1 if r < 0.75 else 2 if r < 0.93 else 3
            elif channel == "mms" and rnd() < 0.5:
                data["segments"] = 1
            etype = "message.received" if inbound else "message.sent"
            self._push(ti, self._envelope(conv.source, acct, ti, etype, data))
            if not conv.listed:
                self._list(conv)
            if inbound and rnd() < 0.04:
                self._flow(ti + 300 + int(rnd() * 3_000), acct, channel, conv)
        if not conv.notify and rnd() < 0.35:
            r = rnd()
            if r < 0.45:
                gap = 600_000 + int(rnd() * 3 * HOUR_MS)
            elif r < 0.8:
                gap = 3 * HOUR_MS + int(rnd() * 17 * HOUR_MS)
            else:
                gap = 20 * HOUR_MS + int(rnd() * 30 * HOUR_MS)
            nt = ti + gap
            if nt < self.end:
                self._schedule(nt, _OP_BURST, conv)

    # -- SmartFlows ---------------------------------------------------------------------

    def _flow(self, t: int, acct: _Acct, channel: str | None, conv: _Conv | None) -> None:
        rng = self.rng
        rnd = rng.random
        if channel is None:
            channel = _FLOW_CHANNELS[bisect(_FLOW_CUM, rnd())]
            if channel not in ("voice", "api"):
                recent = acct.recent["sms" if channel in ("sms", "mms") else channel]
                if recent:
                    conv = recent[int(rnd() * len(recent))]
                else:
                    channel = "api"
        self.n_exec += 1
        self.summary.executions += 1
        execution = f"ex-{acct.index + 1}-{self.n_exec:08x}"
        data: dict[str, Any] = {
            "execution_id": execution,
            "flow_id": acct.flow_ids[int(rnd() * len(acct.flow_ids))],
            "channel": channel,
        }
        if conv is not None and channel not in ("voice", "api"):
            data["business_address"] = conv.business
            data["remote_address"] = conv.remote
        self._push(t, self._envelope(self.src_flow, acct, t, "smartflow.triggered", data))
        if rnd() < acct.profile.nlp_prob:
            tn = t
            kind = "voice" if channel == "voice" else "text"
            for _ in range(1 + int(math.log(1.0 - rnd()) / math.log(0.4 / 1.4))):
                tn += 200 + int(rnd() * 20_000)
                if rnd() < 0.05:
                    kind = "text" if kind == "voice" else "voice"
                self._push(
                    tn,
                    self._envelope(
                        self.src_nlp,
                        acct,
                        tn,
                        "nlp.used",
                        {"execution_id": execution, "kind": kind},
                    ),
                )

    # -- main loop ----------------------------------------------------------------------

    def _spawner(self, t: int, acct: _Acct, kind: int) -> None:
        end = self.end
        origin = acct.rate_origin[kind]
        h = (t - origin) // HOUR_MS
        rates = acct.rates[kind]
        if h >= len(rates):
            return
        hour_end = min(end, origin + (h + 1) * HOUR_MS)
        rate = rates[h]
        nt = t + int(self.rng.expovariate(rate)) if rate > 0 else hour_end
        if nt < hour_end:
            self._schedule(nt, _OP_SPAWN, acct, kind)
        elif hour_end < end:
            self._schedule(hour_end, _OP_TICK, acct, kind)

    def run(self) -> Iterator[bytes]:
        start = self.start
        end = self.end
        for acct in self.accounts:
            for kind in (_K_CALL, _K_CONV, _K_FLOW, _K_DIALER, _K_BRIDGE):
                self._schedule(min(start, acct.rate_origin[kind]), _OP_TICK, acct, kind)
        actions = self.actions
        arrivals = self.arrivals
        pop = heapq.heappop
        while actions:
            t, _, _, op, obj, arg = pop(actions)
            while arrivals and arrivals[0][0] <= t:
                yield pop(arrivals)[2]
            if op == _OP_RELEASE:
                obj.occupied -= 1
            elif op == _OP_SPAWN:
                if t < end:
                    if arg in (_K_CALL, _K_BRIDGE):
                        self._call(t, obj, arg)
                    elif arg == _K_CONV:
                        self._conversation(t, obj)
                    elif arg == _K_FLOW:
                        self._flow(t, obj, None, None)
                    else:
                        self._dialer_burst(t, obj)
                self._spawner(t, obj, arg)
            elif op == _OP_TICK:
                self._spawner(t, obj, arg)
            elif op == _OP_BURST:
                self._burst(t, obj)
            else:
                self._call(t, obj, _K_DIALER)
        while arrivals:
            yield pop(arrivals)[2]
        s = self.summary
        if s.events:
            s.first_time_ms = self.tmin
            s.last_time_ms = self.tmax
        s.lines = s.events + s.duplicates + s.malformed


def iter_events(
    cfg: SimulationConfig,
    accounts: Mapping[str, Any],
    summary: SimulationSummary | None = None,
) -> Iterator[bytes]:
    """JSON lines (bytes, no newline) in arrival order; ``summary`` is filled as they go
    (its counts describe everything queued so far; final once the iterator is exhausted)."""
    sim = _Simulation(cfg, accounts, summary if summary is not None else SimulationSummary())
    return sim.run()


def _open_out(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "wb", compresslevel=3)
    return open(path, "wb")


class _BackgroundWriter:
    """Writes chunks from a thread: gzip (zlib) releases the GIL while it compresses, so
    compression overlaps generation on a multi-core machine."""

    def __init__(self, out: io.BufferedIOBase) -> None:
        self._out = out
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="simulate-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._out.write(chunk)
                except BaseException as exc:  # re-raised in the producing thread
                    self._error = exc

    def write(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def write_log(
    path: str | Path,
    cfg: SimulationConfig,
    accounts: Mapping[str, Any],
    progress: Callable[[int], None] | None = None,
) -> SimulationSummary:
    """Write the log to ``path`` (gzip when it ends in ``.gz``), one event per line;
    ``progress(lines)`` is called every 100,000 lines."""
    summary = SimulationSummary()
    n = 0
    chunk: list[bytes] = []
    with _open_out(Path(path)) as out:
        writer = _BackgroundWriter(out)
        try:
            for line in iter_events(cfg, accounts, summary):
                chunk.append(line)
                if len(chunk) >= 10_000:
                    chunk.append(b"")
                    writer.write(b"\n".join(chunk))
                    chunk.clear()
                    n += 10_000
                    if progress is not None and n % 100_000 == 0:
                        progress(n)
            if chunk:
                chunk.append(b"")
                writer.write(b"\n".join(chunk))
        finally:
            writer.close()
    return summary


def _parse_start(text: str) -> datetime:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


DESCRIPTION = "Write a realistic sample input log (CloudEvents JSON lines) and accounts YAML."


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to a parser (for ``metering simulate``)."""
    d = SimulationConfig()
    ap.add_argument("--out", required=True, help="events log (.jsonl or .jsonl.gz)")
    ap.add_argument("--accounts-out", help="write the generated accounts YAML here")
    ap.add_argument("--accounts-in", help="use this accounts YAML instead of generating one")
    ap.add_argument("--events", type=int, default=d.events, help="approximate number of lines")
    ap.add_argument("--days", type=float, default=d.days)
    ap.add_argument("--accounts", type=int, default=d.accounts)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--start", type=_parse_start, default=d.start, help="RFC 3339 start time")
    ap.add_argument("--lateness-ms", type=int, default=d.lateness_ms)
    ap.add_argument("--late-share", type=float, default=d.late_share)
    ap.add_argument("--duplicate-rate", type=float, default=d.duplicate_rate)
    ap.add_argument("--malformed-rate", type=float, default=d.malformed_rate)
    ap.add_argument("--cdr-share", type=float, default=d.cdr_share)
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(ap)
    return ap


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    return SimulationConfig(
        seed=args.seed,
        start=args.start,
        days=args.days,
        accounts=args.accounts,
        events=args.events,
        lateness_ms=args.lateness_ms,
        late_share=args.late_share,
        duplicate_rate=args.duplicate_rate,
        malformed_rate=args.malformed_rate,
        cdr_share=args.cdr_share,
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run with parsed options (see :func:`add_arguments`): writes the log and the accounts
    YAML, progress on stderr, the summary as JSON on stdout."""
    cfg = config_from_args(args)
    accounts = load_accounts(args.accounts_in) if args.accounts_in else make_accounts(cfg)
    if args.accounts_out:
        write_accounts(args.accounts_out, accounts)
    began = _time.perf_counter()

    def progress(n: int) -> None:
        if not args.quiet:
            rate = n / max(_time.perf_counter() - began, 1e-9)
            print(f"simulate: {n:,} lines ({rate:,.0f}/s)", file=sys.stderr, flush=True)

    summary = write_log(args.out, cfg, accounts, progress)
    elapsed = _time.perf_counter() - began
    info = summary.to_dict()
    info["seconds"] = round(elapsed, 3)
    info["lines_per_second"] = round(summary.lines / max(elapsed, 1e-9))
    sys.stdout.write(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode() + "\n")
    if not args.quiet:
        print(
            f"simulate: wrote {summary.lines:,} lines to {args.out} in {elapsed:.1f}s "
            f"({info['lines_per_second']:,}/s)",
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    return run_cli(build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
