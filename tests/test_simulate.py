"""The sample traffic generator (`metering simulate`): determinism, validity, disorder
bound, duplicates, malformed lines, call descriptions, calendar edge cases, accounts."""

from __future__ import annotations

import gzip
import itertools
import random
import re
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import orjson
import pytest
import yaml

from metering.events.decode import Decoder, Rejection, to_ms
from metering.events.models import (
    AccountData,
    CallAnswered,
    CallCompleted,
    CallEnded,
    CallStarted,
    InputEvent,
    MessageReceived,
    MessageSent,
    NlpUsed,
    SmartflowTriggered,
)
from metering.simulate.accounts import TIMEZONES, make_accounts, write_accounts
from metering.simulate.config import MAX_CALL_DURATION_MS, SimulationConfig, SimulationSummary
from metering.simulate.generator import LocalTimeFormatter, fmt_z, iter_events, main, write_log

CFG = SimulationConfig(seed=3, days=4, accounts=8, events=40_000)
MIDNIGHT_RE = re.compile(r"T\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


class Run:
    def __init__(self, cfg: SimulationConfig) -> None:
        self.cfg = cfg
        self.accounts = make_accounts(cfg)
        self.summary = SimulationSummary()
        self.lines = list(iter_events(cfg, self.accounts, self.summary))
        decoder = Decoder()
        self.decoded: list[InputEvent | Rejection] = [decoder.decode(line) for line in self.lines]
        self.valid: list[tuple[bytes, InputEvent]] = [
            (line, ev)
            for line, ev in zip(self.lines, self.decoded, strict=True)
            if not isinstance(ev, Rejection)
        ]
        self.rejections = [r for r in self.decoded if isinstance(r, Rejection)]
        # Distinct valid events (first occurrence of each (source, id)).
        seen: set[tuple[str, str]] = set()
        self.events: list[InputEvent] = []
        for _, ev in self.valid:
            key = (ev.source, ev.id)
            if key not in seen:
                seen.add(key)
                self.events.append(ev)


@pytest.fixture(scope="module")
def run() -> Run:
    return Run(CFG)


def test_deterministic_for_a_config() -> None:
    cfg = SimulationConfig(seed=11, days=1, accounts=3, events=4_000)
    a = list(iter_events(cfg, make_accounts(cfg)))
    b = list(iter_events(cfg, make_accounts(cfg)))
    assert a == b
    c = list(iter_events(replace(cfg, seed=12), make_accounts(cfg)))
    assert a != c


def test_size_is_close_to_the_target(run: Run) -> None:
    assert len(run.lines) == run.summary.lines
    assert 0.85 * CFG.events <= len(run.lines) <= 1.15 * CFG.events
    assert run.summary.events == len(run.events)
    assert sum(run.summary.by_type.values()) == run.summary.events


def test_every_line_decodes_except_the_malformed_ones(run: Run) -> None:
    s = run.summary
    assert len(run.rejections) == s.malformed > 0
    assert {r.reason for r in run.rejections} <= {"invalid_json", "schema", "unknown_type"}
    assert 0.3 * CFG.malformed_rate <= s.malformed / s.lines <= 3 * CFG.malformed_rate
    assert Counter(type(ev).__name__ for ev in run.events) == Counter(
        {
            "CallStarted": s.by_type["call.started"],
            "CallAnswered": s.by_type["call.answered"],
            "CallEnded": s.by_type["call.ended"],
            "CallCompleted": s.by_type["call.completed"],
            "MessageSent": s.by_type["message.sent"],
            "MessageReceived": s.by_type["message.received"],
            "SmartflowTriggered": s.by_type["smartflow.triggered"],
            "NlpUsed": s.by_type["nlp.used"],
        }
    )


def test_malformed_kinds() -> None:
    cfg = SimulationConfig(seed=5, days=1, accounts=3, events=6_000, malformed_rate=0.05)
    r = Run(cfg)
    reasons = Counter(x.reason for x in r.rejections)
    assert set(reasons) == {"invalid_json", "schema", "unknown_type"}
    assert len(r.rejections) == r.summary.malformed
    assert 0.035 <= r.summary.malformed / r.summary.lines <= 0.065
    unknown = {x.event_type for x in r.rejections if x.reason == "unknown_type"}
    assert "call.transferred" in unknown or len(unknown) >= 2
    # Some garbage is not even UTF-8 (dead letters then carry base64).
    assert any(not _is_utf8(x.raw) for x in r.rejections)
    assert set(r.summary.malformed_by_kind) >= {"truncated", "missing_field", "unknown_type"}


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_disorder_is_bounded_by_the_allowed_lateness(run: Run) -> None:
    watermark: dict[str, int] = {}
    global_wm = -(1 << 62)
    late = 0
    worst = 0
    for _, ev in run.valid:
        t = to_ms(ev.time)
        wm = watermark.get(ev.subject, t)
        assert wm - t < CFG.lateness_ms, (ev, wm - t)
        assert global_wm - t < CFG.max_delay_ms
        worst = max(worst, wm - t)
        if t < wm:
            late += 1
        watermark[ev.subject] = max(wm, t)
        global_wm = max(global_wm, t)
    # There is disorder, and some of it is minutes deep.
    assert late > len(run.valid) * 0.05
    assert worst > CFG.lateness_ms // 2


def test_duplicates_are_byte_identical_repeats(run: Run) -> None:
    counts = Counter(line for line, _ in run.valid)
    repeats = sum(n - 1 for n in counts.values() if n > 1)
    assert repeats == run.summary.duplicates > 0
    assert 0.5 * CFG.duplicate_rate <= repeats / len(run.lines) <= 2 * CFG.duplicate_rate
    # Apart from those repeats, (source, id) pairs are unique.
    assert len({(ev.source, ev.id) for _, ev in run.valid}) == len(counts)


def test_envelopes(run: Run) -> None:
    account_ids = set(run.accounts["accounts"])
    suffixes: Counter[str] = Counter()
    for line, ev in run.valid:
        obj = orjson.loads(line)
        assert obj["specversion"] == "1.0"
        assert set(obj) >= {"specversion", "id", "source", "type", "time", "subject", "data"}
        assert ev.subject in account_ids
        m = MIDNIGHT_RE.search(obj["time"])
        assert m is not None, obj["time"]
        suffixes["Z" if m.group(2) == "Z" else "offset"] += 1
        assert ev.source.startswith("//")
    assert suffixes["Z"] > 0 and suffixes["offset"] > 0


def _calls(
    run: Run,
) -> tuple[dict[tuple[str, str], list[InputEvent]], dict[tuple[str, str], list[CallCompleted]]]:
    lifecycle: dict[tuple[str, str], list[InputEvent]] = defaultdict(list)
    cdrs: dict[tuple[str, str], list[CallCompleted]] = defaultdict(list)
    for ev in run.events:
        if isinstance(ev, CallStarted | CallAnswered | CallEnded):
            lifecycle[(ev.subject, ev.data.call_id)].append(ev)
        elif isinstance(ev, CallCompleted):
            cdrs[(ev.subject, ev.data.call_id)].append(ev)
    return lifecycle, cdrs


def test_lifecycle_and_cdr_are_not_mixed_except_deliberate_double_reports(run: Run) -> None:
    lifecycle, cdrs = _calls(run)
    both = set(lifecycle) & set(cdrs)
    assert len(both) == run.summary.double_reported
    assert all(len(v) == 1 for v in cdrs.values())
    assert len(cdrs) == run.summary.cdr_calls + run.summary.double_reported
    assert 0.2 <= run.summary.cdr_calls / run.summary.calls <= 0.4
    cfg = replace(CFG, double_report_rate=0.0, seed=9, events=8_000)
    lifecycle, cdrs = _calls(Run(cfg))
    assert not set(lifecycle) & set(cdrs)


def test_call_shapes(run: Run) -> None:
    lifecycle, cdrs = _calls(run)
    s = run.summary
    orphans = [
        k for k, evs in lifecycle.items() if not any(isinstance(e, CallStarted) for e in evs)
    ]
    assert len(orphans) == s.orphans
    starts = [e for evs in lifecycle.values() for e in evs if isinstance(e, CallStarted)]
    blocked = {(e.subject, e.data.call_id) for e in starts if e.data.blocked}
    blocked |= {k for k, (c,) in cdrs.items() if c.data.blocked}
    assert len(blocked) == s.blocked_calls > 0
    assert s.over_capacity_calls > 0
    no_end = [
        k
        for k, evs in lifecycle.items()
        if any(isinstance(e, CallStarted) for e in evs)
        and not any(isinstance(e, CallEnded) for e in evs)
    ]
    assert len(no_end) == s.no_end_calls
    for evs in lifecycle.values():
        kinds = [type(e) for e in evs]
        assert len(kinds) == len(set(kinds))
        times = {type(e): to_ms(e.time) for e in evs}
        if CallStarted in times and CallEnded in times:
            assert times[CallStarted] <= times[CallEnded]
            if CallAnswered in times:
                assert times[CallStarted] <= times[CallAnswered] <= times[CallEnded]
    for (cdr,) in cdrs.values():
        d = cdr.data
        assert d.ended_at == cdr.time
        assert d.started_at <= d.ended_at
        if d.answered_at is not None:
            assert d.started_at <= d.answered_at <= d.ended_at
    datas = [e.data for e in starts] + [c[0].data for c in cdrs.values()]
    routes = Counter(d.route_class for d in datas)
    assert set(routes) == {"local", "domestic_ld", "toll_free", "international"}
    assert routes["local"] + routes["domestic_ld"] > 0.6 * len(datas)
    carriers = Counter(d.carrier_class for d in datas)
    assert carriers.most_common(1)[0][0] == "rboc" and carriers["itoc"] > 0
    regions = Counter(d.region for d in datas)
    assert regions["AK"] + regions["HI"] > 0
    assert all(r is None or re.fullmatch(r"[A-Z]{2}", r) for r in regions)
    assert sum(1 for d in datas if d.user) > 0.6 * len(datas)
    assert any(d.local_calling_area for d in datas)
    assert {d.direction for d in datas} == {"inbound", "outbound"}
    # Trunk groups: the configured ones are used, redundant ones included.
    used = {(acct, d.trunk_group) for acct, d in [(e.subject, e.data) for e in starts]}
    redundant = {
        (a, tg)
        for a, obj in run.accounts["accounts"].items()
        for tg, conf in obj["trunk_groups"].items()
        if conf.get("redundant_for")
    }
    assert used & redundant


def test_long_calls_and_cdrs() -> None:
    cfg = replace(CFG, seed=4, no_end_rate=0.05, long_cdr_rate=0.05, events=10_000)
    r = Run(cfg)
    _, cdrs = _calls(r)
    long = [
        c
        for (c,) in cdrs.values()
        if to_ms(c.data.ended_at) - to_ms(c.data.started_at) > MAX_CALL_DURATION_MS
    ]
    assert len(long) == r.summary.long_cdrs > 0
    assert r.summary.no_end_calls > 0


def _local_month_start(tz: str, year: int, month: int) -> int:
    return to_ms(datetime(year, month, 1, tzinfo=ZoneInfo(tz)))


def test_calls_cross_the_month_boundary(run: Run) -> None:
    assert CFG.start == datetime(2026, 10, 30, tzinfo=UTC)
    tzs = {a: obj["timezone"] for a, obj in run.accounts["accounts"].items()}
    boundary = {a: _local_month_start(tz, 2026, 11) for a, tz in tzs.items()}
    lifecycle, cdrs = _calls(run)
    spans: list[tuple[str, int, int]] = []
    for (acct, _), evs in lifecycle.items():
        t = {type(e): to_ms(e.time) for e in evs}
        if CallStarted in t and CallEnded in t:
            spans.append((acct, t[CallStarted], t[CallEnded]))
    for (acct, _), (c,) in cdrs.items():
        spans.append((acct, to_ms(c.data.started_at), to_ms(c.data.ended_at)))
    crossing = [s for s in spans if s[1] < boundary[s[0]] <= s[2]]
    assert crossing
    # and the log holds traffic on both sides of every account's boundary
    for acct, b in boundary.items():
        times = [to_ms(e.time) for e in run.events if e.subject == acct]
        assert min(times) < b < max(times)


def _conversation_items(run: Run) -> dict[tuple[str, str, str, str], list[int]]:
    family = {"sms": "sms", "mms": "sms", "whatsapp": "whatsapp", "facebook": "facebook"}
    convs: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    for ev in run.events:
        if isinstance(ev, MessageSent | MessageReceived):
            d: Any = ev.data
        elif isinstance(ev, SmartflowTriggered) and ev.data.channel in family:
            d = ev.data
            assert d.business_address and d.remote_address
        else:
            continue
        convs[(ev.subject, family[d.channel], d.business_address, d.remote_address)].append(
            to_ms(ev.time)
        )
    return convs


def test_conversations_cross_local_midnight_and_reopen(run: Run) -> None:
    tzs = {a: ZoneInfo(obj["timezone"]) for a, obj in run.accounts["accounts"].items()}
    crossing = 0
    reopened = 0
    for (acct, _, _, _), times in _conversation_items(run).items():
        zone = tzs[acct]
        times.sort()
        origin_day = None
        deadline = None
        for t in times:
            local = datetime.fromtimestamp(t / 1000, tz=UTC).astimezone(zone)
            if deadline is None or t >= deadline:
                if deadline is not None:
                    reopened += 1
                origin_day = local.date()
                next_midnight = datetime.combine(
                    origin_day + timedelta(days=1), datetime.min.time(), zone
                )
                deadline = to_ms(next_midnight) + 86_400_000
            elif local.date() != origin_day:
                crossing += 1
    assert crossing > 0
    assert reopened > 0


def test_messaging_and_flows(run: Run) -> None:
    channels = Counter(
        e.data.channel for e in run.events if isinstance(e, MessageSent | MessageReceived)
    )
    assert set(channels) == {"sms", "mms", "whatsapp", "facebook"}
    assert run.summary.by_type["message.sent"] > 0 and run.summary.by_type["message.received"] > 0
    segments = Counter(
        e.data.segments for e in run.events if isinstance(e, MessageSent | MessageReceived)
    )
    assert set(segments) == {1, 2, 3}
    flows = [e for e in run.events if isinstance(e, SmartflowTriggered)]
    assert {f.data.channel for f in flows} == {"voice", "sms", "mms", "whatsapp", "facebook", "api"}
    # Messaging flows use the addresses of existing conversations.
    conv_keys = {(a, b, r) for (a, _, b, r) in _conversation_items(run)}
    msg_addrs = {
        (e.subject, e.data.business_address, e.data.remote_address)
        for e in run.events
        if isinstance(e, MessageSent | MessageReceived)
    }
    for f in flows:
        if f.data.channel not in ("voice", "api"):
            assert (f.subject, f.data.business_address, f.data.remote_address) in msg_addrs
    assert conv_keys
    executions = {(f.subject, f.data.execution_id): to_ms(f.time) for f in flows}
    nlp = [e for e in run.events if isinstance(e, NlpUsed)]
    with_nlp = {(e.subject, e.data.execution_id) for e in nlp}
    assert with_nlp <= set(executions)
    assert 0.15 <= len(with_nlp) / len(executions) <= 0.35
    for e in nlp:
        assert 0 < to_ms(e.time) - executions[(e.subject, e.data.execution_id)] < 300_000


def test_diurnal_pattern(run: Run) -> None:
    tzs = {a: ZoneInfo(obj["timezone"]) for a, obj in run.accounts["accounts"].items()}
    by_hour: Counter[int] = Counter()
    for ev in run.events:
        if isinstance(ev, CallStarted | CallCompleted):
            local = ev.time.astimezone(tzs[ev.subject])
            if local.weekday() < 5:
                by_hour[local.hour] += 1
    business = sum(by_hour[h] for h in range(9, 17))
    night = sum(by_hour[h] for h in range(0, 8))
    assert business > 5 * night


def test_accounts_yaml_matches_spec_section_8(tmp_path: Path) -> None:
    cfg = SimulationConfig(accounts=10, events=50_000)
    accounts = make_accounts(cfg)
    path = tmp_path / "accounts.yaml"
    write_accounts(path, accounts)
    loaded = yaml.safe_load(path.read_text())
    assert loaded == accounts
    objs = loaded["accounts"]
    assert len(objs) == 10
    parsed = {a: msgspec.convert(o, AccountData) for a, o in objs.items()}
    tzs = {p.timezone for p in parsed.values()}
    assert tzs >= {"America/Denver", "America/New_York", "Europe/London", "UTC", "Pacific/Honolulu"}
    for tz in tzs:
        ZoneInfo(tz)
    policies = Counter(tuple(p.policies) for p in parsed.values())
    assert policies.most_common(1)[0][0] == ("mitel_us", "intelepeer_uc", "intelepeer_cap")
    assert len(policies) > 1
    assert any("policies" not in o for o in objs.values())  # default applies
    bundles = {tg.bundle for p in parsed.values() for tg in p.trunk_groups.values()}
    assert bundles == {"user", "call_path", "basic_port"}
    redundant = 0
    for p in parsed.values():
        for tg in p.trunk_groups.values():
            if tg.redundant_for is not None:
                redundant += 1
                primary = p.trunk_groups[tg.redundant_for]
                assert primary.redundant_for is None and primary.capacity
            else:
                assert tg.capacity is not None and tg.capacity >= 1
    assert redundant > 0


def test_write_log_plain_and_gzip(tmp_path: Path) -> None:
    cfg = SimulationConfig(seed=2, days=0.5, accounts=2, events=3_000)
    accounts = make_accounts(cfg)
    plain = tmp_path / "events.jsonl"
    gz = tmp_path / "events.jsonl.gz"
    s1 = write_log(plain, cfg, accounts)
    s2 = write_log(gz, cfg, accounts)
    assert s1 == s2
    data = plain.read_bytes()
    assert gzip.decompress(gz.read_bytes()) == data
    assert data.endswith(b"\n")
    assert data.split(b"\n")[:-1] == list(iter_events(cfg, accounts))
    assert s1.lines == data.count(b"\n")
    d = s1.to_dict()
    assert d["first_time"] is not None and d["by_type"]


def test_generation_is_streaming() -> None:
    # The first lines of a very large run come without generating the rest.
    cfg = SimulationConfig(seed=1, days=30, accounts=4, events=5_000_000)
    first = list(itertools.islice(iter_events(cfg, make_accounts(cfg)), 2_000))
    assert len(first) == 2_000


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e.jsonl.gz"
    acc = tmp_path / "a.yaml"
    argv = ["--out", str(out), "--accounts-out", str(acc), "--events", "2000", "--days", "1"]
    assert main([*argv, "--accounts", "3", "--seed", "1"]) == 0
    info = orjson.loads(capsys.readouterr().out)
    assert info["lines"] == gzip.decompress(out.read_bytes()).count(b"\n")
    assert set(yaml.safe_load(acc.read_text())["accounts"]) == {"acct-1", "acct-2", "acct-3"}
    out2 = tmp_path / "e2.jsonl.gz"
    assert (
        main(
            [
                "--out",
                str(out2),
                "--accounts-in",
                str(acc),
                "--events",
                "2000",
                "--days",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert gzip.decompress(out2.read_bytes()) == gzip.decompress(out.read_bytes())


@pytest.mark.parametrize("tz", [*TIMEZONES, "Australia/Lord_Howe", "Asia/Kathmandu"])
def test_local_times_round_trip_across_dst(tz: str) -> None:
    fmt = LocalTimeFormatter(tz)
    base = to_ms(datetime(2026, 11, 1, 5, tzinfo=UTC))
    rng = random.Random(tz)
    for _ in range(2_000):
        ms = base + rng.randrange(-60 * 86_400_000, 200 * 86_400_000)
        text = fmt(ms)
        assert MIDNIGHT_RE.search(text) and not text.endswith("Z")
        assert to_ms(datetime.fromisoformat(text)) == ms
        assert to_ms(datetime.fromisoformat(fmt_z(ms))) == ms
