"""``metering report`` end to end, checked in a real browser (headless Chromium).

A small generated log (~20k events, 4 days across a month boundary, three simulated
accounts) plus a hand-made account (one user over the 2,500 included minutes, an outbound
answer ratio under 90 %, calls over capacity, messages in the previous cycle only) is
replayed into chDB through the real CLI. For several (account, cycle) pairs the test
writes the report, opens it in headless Chromium with a small measuring script added to
a copy of the page (``--dump-dom`` after the script wrote its findings into the DOM), and
checks that

- every chart is drawn (SVG boxes of non-zero size): one bar per local day holding
  Interactions (days and per-channel counts from the stored ``local_day`` of the
  interactions), the concurrency series, the capacity line and the peak marker at the
  statement's ``peak_at`` (its on-screen position is checked against the time and value
  axes), bars of minutes by route class proportional to the figures;
- every figure shown equals ``metering statement``'s JSON for the same account and cycle
  (``data-field`` / ``data-value`` and the visible text), every fair-use status, value and
  charge, the overage and surcharge totals, and each charge's basis multiplies out to the
  statement's amount;
- the evidence lists exactly ``peak`` calls in progress at each peak instant;
- the page loads nothing from outside.

Chromium is the Debian package (``scripts/ensure-chromium.sh``). Without it the browser
tests are skipped, except under CI (``CI=true``) where they fail.
"""

from __future__ import annotations

import functools
import gzip
import html
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from metering.simulate.accounts import make_accounts, write_accounts
from metering.simulate.config import SimulationConfig
from metering.simulate.generator import write_log

CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
PY = sys.executable
HEAVY = "acct-heavy"
HEAVY_TZ = "America/Los_Angeles"

# The traffic window: two days either side of the start of the current month (UTC), so the
# log always crosses a month boundary and stays within the retention of the call records
# (60 days) whatever the date the test runs.
_TODAY = datetime.now(UTC).date()
MONTH_START = datetime(_TODAY.year, _TODAY.month, 1, tzinfo=UTC)
START = MONTH_START - timedelta(days=2)
CUR = f"{MONTH_START:%Y-%m}"
PREV = f"{MONTH_START - timedelta(days=1):%Y-%m}"

PAIRS: list[tuple[str, str]] = [
    ("acct-1", PREV),
    ("acct-1", CUR),
    ("acct-2", CUR),
    ("acct-3", PREV),
    (HEAVY, CUR),
    (HEAVY, PREV),
]


# --------------------------------------------------------------------------- helpers


def run(
    args: list[str], *, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr[-3000:]}"
    return done


def metering(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([PY, "-m", "metering.cli", *args], check=check)


@functools.cache
def _report_command() -> list[str]:
    """``metering report`` once it is wired into the CLI, else the package's own entry."""
    probe = run([PY, "-m", "metering.cli", "report", "--help"], check=False)
    if probe.returncode == 0:
        return [PY, "-m", "metering.cli", "report"]
    return [PY, "-m", "metering.report"]


def report(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([*_report_command(), *args], check=check)


def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def usd(amount: str) -> str:
    return f"${Decimal(amount):,.2f}"


# ------------------------------------------------------------------ the hand-made account


def heavy_events() -> list[dict[str, Any]]:
    """CloudEvents of ``acct-heavy`` in time order (see the module docstring)."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(HEAVY_TZ)
    # 01:00 local on the 1st; from there on absolute time (a DST change may follow)
    base = datetime(MONTH_START.year, MONTH_START.month, 1, 1, 0, tzinfo=tz).astimezone(UTC)
    events: list[dict[str, Any]] = []
    seq = [0]

    def ev(etype: str, time: datetime, data: dict[str, Any]) -> None:
        seq[0] += 1
        events.append(
            {
                "specversion": "1.0",
                "id": f"heavy-{seq[0]:05d}",
                "source": "//test/report",
                "type": etype,
                "time": iso(time),
                "subject": HEAVY,
                "data": data,
            }
        )

    def cdr(cid: str, tg: str, start: datetime, minutes: float, answered: bool, **kw: Any) -> None:
        end = start + timedelta(minutes=minutes)
        ev(
            "call.completed",
            end,
            {
                "call_id": cid,
                "trunk_group": tg,
                "started_at": iso(start),
                "answered_at": iso(start + timedelta(seconds=10)) if answered else None,
                "ended_at": iso(end),
                **kw,
            },
        )

    # 12 calls of 230 billable minutes by one user: 2,760 local + domestic LD minutes.
    for i in range(12):
        cdr(
            f"h-{i:02d}",
            "tg-1",
            base + timedelta(hours=4 * i),
            230 + 10 / 60,
            True,
            direction="outbound",
            route_class="local" if i % 2 == 0 else "domestic_ld",
            carrier_class="rboc",
            user="u-heavy",
        )
    # 120 short outbound calls, 8 in 10 answered: answer ratio 0.8 < 0.9 (surcharge).
    for k in range(120):
        cdr(
            f"c-{k:03d}",
            "tg-2",
            base + timedelta(minutes=30 + 10 * k),
            2,
            k % 10 < 8,
            direction="outbound",
            route_class="domestic_ld",
            carrier_class="itoc",
            user=f"u-c{k % 10}",
            region="CO",
        )
    # Three calls on tg-1 (capacity 2) while u-heavy's second call holds a port.
    for j in range(3):
        cdr(
            f"o-{j}",
            "tg-1",
            base + timedelta(hours=5, minutes=3 + j),
            20,
            True,
            direction="inbound",
            route_class="local",
            user=f"u-o{j}",
        )
    # Messages: some in the previous cycle (its statement has no call at all).
    for m in range(8):
        at = base - timedelta(hours=30) + timedelta(hours=3 * m)
        ev(
            "message.sent" if m % 2 == 0 else "message.received",
            at,
            {
                "message_id": f"m-{m}",
                "channel": "sms" if m % 3 else "whatsapp",
                "business_address": "+15035550100",
                "remote_address": f"+1503555{m % 4:04d}",
                "segments": 1 + m % 2,
            },
        )
    events.sort(key=lambda e: (e["time"], e["id"]))
    return events


# ----------------------------------------------------------------------------- fixture


LOCAL_DAYS_CODE = """
import json, sys
from metering.storage.client import connect
pairs = json.loads(sys.argv[2])
c = connect(db_dir=sys.argv[1])
out = {}
for a, cy in pairs:
    rows = c.query(
        "SELECT toString(local_day), channel, count() FROM interactions FINAL "
        "WHERE account = {a:String} AND cycle = {c:String} AND deleted = 0 "
        "GROUP BY local_day, channel ORDER BY local_day, channel",
        parameters={"a": a, "c": cy},
    ).result_rows
    out[a + " " + cy] = [[str(d), str(ch), int(n)] for d, ch, n in rows]
c.close()
print(json.dumps(out))
"""


class Built:
    def __init__(self, root: Path, db: Path) -> None:
        self.root = root
        self.db = db
        self.statements: dict[tuple[str, str], dict[str, Any]] = {}
        self.local_days: dict[tuple[str, str], list[list[Any]]] = {}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("report")
    log, accounts_file, db = root / "events.jsonl.gz", root / "accounts.yaml", root / "db"
    cfg = SimulationConfig(seed=11, start=START, days=4, accounts=3, events=20_000)
    accounts = make_accounts(cfg)
    write_log(log, cfg, accounts)
    with gzip.open(log, "ab") as f:  # the hand-made account, after the simulated traffic
        for e in heavy_events():
            f.write(json.dumps(e).encode() + b"\n")
    accounts["accounts"][HEAVY] = {
        "timezone": HEAVY_TZ,
        "trunk_groups": {
            "tg-1": {"capacity": 2, "bundle": "user"},
            "tg-2": {"capacity": 5, "bundle": "call_path"},
        },
    }
    write_accounts(accounts_file, accounts)
    metering("replay", str(log), "--accounts", str(accounts_file), "--db", str(db), "--quiet")

    b = Built(root, db)
    for account, cycle in PAIRS:
        out = metering("statement", "--db", str(db), "--account", account, "--cycle", cycle)
        b.statements[(account, cycle)] = json.loads(out.stdout)
    days = run([PY, "-c", LOCAL_DAYS_CODE, str(db), json.dumps(PAIRS)]).stdout
    for key, rows in json.loads(days).items():
        account, cycle = key.split(" ")
        b.local_days[(account, cycle)] = rows
    return b


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        msg = "Chromium not found: run scripts/ensure-chromium.sh (Debian package chromium)"
        if CI:
            pytest.fail(msg + " (CI=true: the browser test must run)")
        pytest.skip(msg)
    return path


# ---------------------------------------------------------------------- the browser part

MEASURE_JS = r"""
(function () {
  const box = (e) => { if (!e) return null; const r = e.getBoundingClientRect();
    return {x: r.left, y: r.top, w: r.width, h: r.height}; };
  const data = (e) => Object.assign({}, e.dataset);
  const out = {fields: [], fairuse: [], charts: [], evidence: [], bases: [], external: 0,
               resources: performance.getEntriesByType('resource').length};
  document.querySelectorAll('[data-field]').forEach((e) => {
    const item = Object.assign(data(e), {text: e.textContent.trim().replace(/\s+/g, ' '),
                                         box: box(e)});
    const t = e.querySelector('time');
    if (t) item.datetime = t.getAttribute('datetime');
    (e.hasAttribute('data-rule') ? out.fairuse : out.fields).push(item);
  });
  document.querySelectorAll('svg[data-chart]').forEach((svg) => {
    const c = Object.assign(data(svg), {box: box(svg)});
    const plot = svg.querySelector('[data-role=plot]');
    if (plot) c.plot = Object.assign(data(plot), {box: box(plot)});
    const series = svg.querySelector('[data-series]');
    if (series) c.series = Object.assign(data(series), {box: box(series)});
    const cap = svg.querySelector('[data-role=capacity]');
    if (cap) c.capacityLine = Object.assign(data(cap), {box: box(cap)});
    const marker = svg.querySelector('[data-marker=peak]');
    if (marker) c.marker = Object.assign(data(marker),
                                         {dot: box(marker.querySelector('[data-role=peak-dot]'))});
    c.marks = Array.from(svg.querySelectorAll('[data-bar]')).map((b) => Object.assign(data(b), {
      box: box(b),
      segments: Array.from(b.querySelectorAll('[data-channel]')).map(
        (s) => Object.assign(data(s), {box: box(s)})),
    }));
    out.charts.push(c);
  });
  document.querySelectorAll('[data-evidence]').forEach((e) => {
    out.evidence.push(Object.assign(data(e), {
      rows: Array.from(e.querySelectorAll('tr[data-call-id]')).map(data)}));
  });
  document.querySelectorAll('[data-charge-rule]').forEach((e) => out.bases.push(data(e)));
  out.external = document.querySelectorAll(
    'script[src], link[rel=stylesheet], link[href], img, iframe, object, embed, video, audio'
  ).length;
  const pre = document.createElement('pre');
  pre.id = '__measure';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
"""

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--window-size=1280,1024",
]


def measure(chromium: str, page: Path, scratch: Path) -> dict[str, Any]:
    """Open a copy of the page with the measuring script in Chromium; its findings."""
    text = page.read_text(encoding="utf-8")
    probe = scratch / f"{page.stem}.measure.html"
    probe.write_text(text.replace("</body>", f"<script>{MEASURE_JS}</script></body>"), "utf-8")
    profile = scratch / f"{page.stem}.profile"
    done = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    m = re.search(r'<pre id="__measure">(.*?)</pre>', done.stdout, re.S)
    assert m, f"no measurements from Chromium (exit {done.returncode}): {done.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(html.unescape(m.group(1)))
    return result


# --------------------------------------------------------------------------- checks


def flatten(st: dict[str, Any]) -> dict[str, Any]:
    """Statement figures by ``data-field`` path (fair_use is checked separately)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else k, x)
        else:
            out[prefix] = v

    for key in ("account", "cycle", "timezone", "interactions", "messages", "voice",
                "concurrency", "charges"):  # fmt: skip
        walk(key, st[key])
    return out


def raw(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def check_text(path: str, value: Any, item: dict[str, Any]) -> None:
    text = item["text"]
    if path.endswith("peak_at"):
        if value is None:
            assert text == "—", (path, text)
        else:
            assert item.get("datetime") == value, (path, item)
            hhmmss = value[11:23]  # the UTC time of day, with milliseconds
            assert hhmmss in text, (path, text)
    elif path.endswith("_usd"):
        assert text == usd(value), (path, text, value)
    elif path.endswith(".capacity") and value is None:
        assert text == "unlimited", (path, text)
    elif isinstance(value, int):
        assert text.replace(",", "") == str(value), (path, text, value)
    else:
        assert text == str(value), (path, text, value)


def near(a: float, b: float, tol: float = 1.5) -> bool:
    return abs(a - b) <= tol


@pytest.mark.parametrize(("account", "cycle"), PAIRS, ids=[f"{a}-{c}" for a, c in PAIRS])
def test_report_in_browser_matches_statement(
    chromium: str, built: Built, account: str, cycle: str, tmp_path: Path
) -> None:
    st = built.statements[(account, cycle)]
    page = tmp_path / f"{account}-{cycle}.html"
    out = report("--db", str(built.db), "--account", account, "--cycle", cycle, "--out", str(page))
    assert str(page) in out.stdout
    source = page.read_text(encoding="utf-8")
    # Self-contained: nothing to fetch, no script to run.
    for needle in ("http://", "https://", "url(", "@import", "<script src", "<link"):
        assert needle not in source, needle
    assert re.search(r"<script(?![^>]*application/json)", source) is None

    m = measure(chromium, page, tmp_path)
    assert m["external"] == 0 and m["resources"] == 0

    # ---- every statement figure is shown, with the statement's value and text
    flat = flatten(st)
    by_path: dict[str, list[dict[str, Any]]] = {}
    for item in m["fields"]:
        by_path.setdefault(item["field"], []).append(item)
    extra = set(by_path) - set(flat) - {"charges.total_usd"}
    assert not extra, f"figures on the page that the statement does not have: {extra}"
    for path, value in flat.items():
        items = by_path.get(path)
        assert items, f"{path} is not shown"
        assert any(i["box"]["w"] > 0 and i["box"]["h"] > 0 for i in items), f"{path} is hidden"
        for item in items:
            assert item["value"] == raw(value), (path, item["value"], value)
            check_text(path, value, item)
    total = Decimal(st["charges"]["overage_usd"]) + Decimal(st["charges"]["surcharge_usd"])
    for item in by_path["charges.total_usd"]:
        assert item["value"] == f"{total:.2f}" and item["text"] == usd(f"{total:.2f}")

    # ---- fair use: every rule and scope, value, status and charge
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for item in m["fairuse"]:
        cells.setdefault((item["rule"], item["scope"], item["field"]), []).append(item)
    assert {(r, s) for r, s, _ in cells} == {(f["rule"], f["scope"]) for f in st["fair_use"]}
    for f in st["fair_use"]:
        key = (f["rule"], f["scope"])
        (status,) = cells[(*key, "status")]
        assert status["value"] == f["status"], (key, status)
        (charge,) = cells[(*key, "charge_usd")]
        assert charge["value"] == f["charge_usd"] and charge["text"] == usd(f["charge_usd"])
        (value,) = cells[(*key, "value")]
        assert value["value"] == raw(f["value"])
        assert float(value["text"].replace(",", "")) == f["value"], (key, value["text"])
        for thr in cells.get((*key, "threshold"), []):
            assert thr["value"] == raw(f["threshold"])
        if "acd_seconds" in f:
            (acd,) = cells[(*key, "acd_seconds")]
            assert float(acd["value"]) == f["acd_seconds"]
            assert float(acd["text"].replace(",", "")) == f["acd_seconds"]

    # ---- the basis of every charge multiplies out to the statement's amount
    charged = {(f["rule"], f["scope"]): f for f in st["fair_use"] if f["charge_usd"] != "0.00"}
    bases = {(b["chargeRule"], b["scope"]): b for b in m["bases"]}
    assert set(bases) == set(charged)
    for key, b in bases.items():
        f = charged[key]
        amount = (Decimal(b["quantity"]) * Decimal(b["rate"])).quantize(
            Decimal("0.01"), ROUND_HALF_UP
        )
        assert b["amount"] == f["charge_usd"] == f"{amount:.2f}", (key, b, f)
        if f["rule"] == "minutes_per_user":
            assert int(b["quantity"]) == f["value"] - 2500 and b["rate"] == "0.03"
        else:
            assert int(b["quantity"]) == st["voice"]["billable_minutes"] and b["rate"] == "0.02"

    charts = m["charts"]
    for c in charts:
        assert c["box"]["w"] > 100 and c["box"]["h"] > 50, c["chart"]

    # ---- daily Interactions: one bar per local day, per-channel segments
    days: dict[str, dict[str, int]] = {}
    for d, ch, n in built.local_days[(account, cycle)]:
        days.setdefault(d, {})[ch] = n
    daily = [c for c in charts if c["chart"] == "daily-interactions"]
    if st["interactions"]["total"] == 0:
        assert not daily
    else:
        (chart,) = daily
        bars = chart["marks"]
        assert len(bars) == len(days) == int(chart["bars"])
        assert [b["day"] for b in bars] == sorted(days)
        for b in bars:
            assert b["box"]["w"] > 0 and b["box"]["h"] > 0, b
            want = days[b["day"]]
            assert int(b["value"]) == sum(want.values())
            assert {s["channel"]: int(s["value"]) for s in b["segments"]} == want
            for s in b["segments"]:
                assert s["box"]["w"] > 0 and s["box"]["h"] > 0
        assert sum(int(b["value"]) for b in bars) == st["interactions"]["total"]
        for ch, n in st["interactions"]["by_channel"].items():
            assert (
                sum(int(s["value"]) for b in bars for s in b["segments"] if s["channel"] == ch) == n
            )
        # bar heights are proportional to the counts
        plot_h = chart["plot"]["box"]["h"]
        ymax = int(chart["ymax"])
        for b in bars:
            drawn = sum(seg["box"]["h"] for seg in b["segments"])
            assert near(drawn, int(b["value"]) / ymax * plot_h), (b, drawn)

    # ---- concurrency: the account and each trunk group, peak marked at peak_at
    conc = st["concurrency"]
    timelines = {c["scope"]: c for c in charts if c["chart"] == "concurrency"}
    assert set(timelines) == {"account"} | {f"trunk_group:{g}" for g in conc["trunk_groups"]}
    expected = {"account": (conc["peak"], conc["peak_at"], None)} | {
        f"trunk_group:{g}": (v["peak"], v["peak_at"], v["capacity"])
        for g, v in conc["trunk_groups"].items()
    }
    for scope, (peak, peak_at, capacity) in expected.items():
        c = timelines[scope]
        assert int(c["peak"]) == peak
        # the drawn series reaches exactly the billed peak
        assert int(c["series"]["max"]) == peak, (scope, c["series"]["max"], peak)
        if peak:
            assert c["series"]["box"]["w"] > 0 and c["series"]["box"]["h"] > 0
        if scope != "account":
            if capacity is None:
                assert "capacityLine" not in c
            else:
                assert int(c["capacityLine"]["value"]) == capacity
                assert c["capacityLine"]["box"]["w"] > 0
        if peak_at is None:
            assert "marker" not in c
            continue
        mk = c["marker"]
        assert mk["at"] == peak_at and int(mk["value"]) == peak
        plot = c["plot"]
        t0, t1, ymax = int(plot["t0"]), int(plot["t1"]), int(plot["ymax"])
        at = int(mk["atMs"])
        assert t0 <= at < t1
        dot, pb = mk["dot"], plot["box"]
        assert dot["w"] > 0 and dot["h"] > 0
        cx, cy = dot["x"] + dot["w"] / 2, dot["y"] + dot["h"] / 2
        assert near(cx, pb["x"] + (at - t0) / (t1 - t0) * pb["w"]), (scope, cx, pb)
        assert near(cy, pb["y"] + pb["h"] - peak / ymax * pb["h"]), (scope, cy, pb)

    # ---- minutes by route class
    (rc_chart,) = [c for c in charts if c["chart"] == "route-class-minutes"]
    minutes = st["voice"]["minutes_by_route_class"]
    rc_bars = {b["routeClass"]: b for b in rc_chart["marks"]}
    assert {k: int(b["value"]) for k, b in rc_bars.items()} == minutes
    top = max(minutes.values())
    widest = max(b["box"]["w"] for b in rc_bars.values())
    for rc, b in rc_bars.items():
        assert (b["box"]["w"] > 0) == (minutes[rc] > 0)
        if top:
            assert near(b["box"]["w"], minutes[rc] / top * widest), (rc, b)

    # ---- evidence: the calls in progress at each peak instant
    evidence = {e["evidence"]: e for e in m["evidence"]}
    assert set(evidence) == {s for s, (p, at, _) in expected.items() if p and at}
    for scope, e in evidence.items():
        peak, peak_at, _ = expected[scope]
        assert e["at"] == peak_at
        assert int(e["peak"]) == peak and len(e["rows"]) == peak, (scope, len(e["rows"]), peak)
        at = int(timelines[scope]["marker"]["atMs"])
        for row in e["rows"]:
            assert int(row["startedAt"]) <= at, row
            assert "endAt" not in row or int(row["endAt"]) > at, row


def test_the_sample_has_what_the_report_must_show(built: Built) -> None:
    """The workload exercises charges of both kinds, over-capacity and a cycle w/o calls."""
    sts = built.statements
    assert Decimal(sts[(HEAVY, CUR)]["charges"]["overage_usd"]) == Decimal("7.80")
    assert any(Decimal(s["charges"]["surcharge_usd"]) > 0 for s in sts.values())
    heavy = sts[(HEAVY, CUR)]["concurrency"]["trunk_groups"]["tg-1"]
    assert heavy["peak"] > heavy["capacity"]
    assert sts[(HEAVY, PREV)]["voice"]["attempts"] == 0
    assert any(
        f["status"] == "breach"
        for s in sts.values()
        for f in s["fair_use"]
        if f["rule"] != "bundle_sharing"
    )


def test_errors_are_one_line_exit_2(built: Built, tmp_path: Path) -> None:
    out = str(tmp_path / "x.html")
    cases = [
        (["--account", "nobody", "--cycle", CUR], "nobody"),
        (["--account", "acct-1", "--cycle", "1999-01"], "1999-01"),
        (["--account", "acct-1", "--cycle", "2026-13"], "YYYY-MM"),
    ]
    for args, needle in cases:
        done = report("--db", str(built.db), *args, "--out", out, check=False)
        assert done.returncode == 2, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], done.stderr
        assert "Traceback" not in done.stderr
    assert not Path(out).exists()
    done = report("--account", "acct-1", "--cycle", CUR, "--out", out, check=False)
    assert done.returncode == 2 and "--db" in done.stderr
    done = report(
        "--db", str(built.db), "--account", "acct-1", "--cycle", CUR,
        "--out", str(tmp_path / "missing" / "x.html"), check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_bucket_and_sweep_helpers() -> None:
    from metering.report.data import bucket_size_ms, sweep_buckets

    minute = 60_000
    assert bucket_size_ms(0, 720 * minute) == minute
    assert bucket_size_ms(0, 4 * 1440 * minute) == 10 * minute
    assert bucket_size_ms(0, 31 * 1440 * minute) == 120 * minute
    # [0, 10) and [5, 15) overlap on [5, 10); [10, 20) starts as the first ends
    values, peak, at = sweep_buckets([(0, 10), (5, 15), (10, 20), (30, 30)], 0, 40, 10)
    assert (peak, at) == (2, 5)
    assert values == [2, 2, 0, 0]
    # a call started before the range occupies from its start
    values, peak, at = sweep_buckets([(-5, 5)], 0, 20, 10)
    assert (values, peak, at) == ([1, 0], 1, 0)


def test_local_days_of_the_sample_cross_the_month(built: Built) -> None:
    days = {d for rows in built.local_days.values() for d, _, _ in rows}
    months = {date.fromisoformat(d).month for d in days}
    assert len(months) == 2
