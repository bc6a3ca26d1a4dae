"""The report as one self-contained HTML page: inline CSS, inline SVG charts drawn here.

No script, font, image or stylesheet is loaded from anywhere: the file can be mailed,
archived and printed as it is. Every figure of the statement is shown with
``data-field="<path in the statement JSON>"`` and ``data-value="<the statement's value>"``
(fair-use cells carry ``data-rule``, ``data-scope`` and ``data-field``), and every chart
is an ``<svg data-chart="...">`` whose marks carry ``data-value`` (and ``data-day``,
``data-channel``, ``data-route-class``, ``data-at`` ...), so a test (or a script of the
billing team) can check what is drawn against ``metering statement``.

Numbers are written with thousands separators; amounts are the statement's strings with
a dollar sign (and separators) added, never recomputed.
"""

from __future__ import annotations

import html
import json
import math
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from metering.engine.rules import RULES
from metering.events.decode import EPOCH, ms_to_rfc3339
from metering.report.data import (
    CallInProgress,
    ChargeBasis,
    DailyInteractions,
    FairUseRow,
    PeakEvidence,
    ReportData,
    Timeline,
    local_midnight,
)

__all__ = ["CHANNEL_COLORS", "ROUTE_CLASS_LABELS", "RULE_TITLES", "render_html"]

CHANNEL_COLORS: dict[str, str] = {
    "voice": "#2f6fdb",
    "sms": "#2b9348",
    "whatsapp": "#13a89e",
    "facebook": "#7b4fd6",
    "api": "#e8890c",
}
CHANNEL_LABELS: dict[str, str] = {
    "voice": "Voice (SmartFlows)",
    "sms": "SMS / MMS",
    "whatsapp": "WhatsApp",
    "facebook": "Facebook",
    "api": "API (SmartFlows)",
}
ROUTE_CLASS_LABELS: dict[str, str] = {
    "local": "Local",
    "domestic_ld": "Domestic long distance",
    "toll_free": "Toll-free",
    "international": "International",
}
ROUTE_CLASS_SHORT: dict[str, str] = {
    "local": "local",
    "domestic_ld": "domestic LD",
    "toll_free": "toll-free",
    "international": "international",
}
ROUTE_CLASS_COLORS: dict[str, str] = {
    "local": "#2f6fdb",
    "domestic_ld": "#13a89e",
    "toll_free": "#e8890c",
    "international": "#b5399b",
}
RULE_TITLES: dict[str, str] = {
    "minutes_per_user": "Local + domestic LD minutes per user",
    "rboc_mix": "RBOC share of outbound RBOC + ITOC minutes",
    "call_completion": "Outbound call completion (answer ratio)",
    "alaska_hawaii_share": "Alaska/Hawaii share of outbound domestic LD minutes",
    "toll_free_share": "Toll-free share of all minutes",
    "local_calling_area": "Share of the largest local calling area",
    "bundle_sharing": "Most simultaneous calls of one user",
    "nlp_share": "Share of SmartFlow executions using NLP",
    "calls_per_second": "Most call starts in one second",
}
STATUS_LABELS: dict[str, str] = {
    "ok": "OK",
    "warning": "Warning",
    "breach": "Breach",
    "insufficient_data": "Insufficient data",
}
VOICE_FIELDS: tuple[tuple[str, str], ...] = (
    ("attempts", "Call attempts (blocked included)"),
    ("answered", "Answered"),
    ("blocked", "Blocked (all ports in use)"),
    ("timed_out", "Timed out"),
    ("over_capacity", "Over capacity"),
    ("billable_minutes", "Billable minutes"),
)

W = 960  # width of every chart's viewBox


# ------------------------------------------------------------------------ formatting


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def attrs(**kw: object) -> str:
    """`` data-a="1" data-b-c="x"`` from keyword arguments (``_`` becomes ``-``, a trailing
    ``_`` is dropped: ``class_``); None and empty values are left out."""
    return "".join(
        f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"'
        for k, v in kw.items()
        if v is not None and v != ""
    )


def num(n: int) -> str:
    return f"{n:,}"


def usd(amount: str) -> str:
    """A statement amount ("1234.50") as "$1,234.50" (same digits, separators added)."""
    return f"${Decimal(amount):,.2f}"


def ratio(v: float) -> str:
    return f"{v:.4f}"


def rule_value(rule: str, v: float | int) -> str:
    return ratio(float(v)) if RULES[rule].ratio else num(int(v))


def raw(v: object) -> str:
    """A statement value as its JSON text (what ``data-value`` carries)."""
    if isinstance(v, str):
        return v
    return json.dumps(v)


def field(path: str, value: object, text: str, tag: str = "span", cls: str = "") -> str:
    return f"<{tag}{attrs(data_field=path, data_value=raw(value), class_=cls)}>{text}</{tag}>"


class Clock:
    """Local (account time zone) and UTC renderings of instants."""

    def __init__(self, tzname: str) -> None:
        self.tz = ZoneInfo(tzname)
        self.tzname = tzname

    def local(self, ms: int) -> datetime:
        return (EPOCH + timedelta(milliseconds=ms)).astimezone(self.tz)

    def utc(self, ms: int) -> datetime:
        return EPOCH + timedelta(milliseconds=ms)

    def stamp(self, ms: int, *, millis: bool = True, year: bool = True) -> str:
        """``Mon 2 Nov 2026, 14:36:44.130 MST``."""
        t = self.local(ms)
        y = f" {t.year}" if year else ""
        ms_part = f".{t.microsecond // 1000:03d}" if millis else ""
        return f"{t:%a} {t.day} {t:%b}{y}, {t:%H:%M:%S}{ms_part} {t.tzname()}"

    def short(self, ms: int) -> str:
        """``Mon 2 Nov 14:36``."""
        t = self.local(ms)
        return f"{t:%a} {t.day} {t:%b} {t:%H:%M}"

    def time(self, ms: int, ref_day: date | None = None) -> str:
        """``14:36:44`` (with the day when it is not ``ref_day``)."""
        t = self.local(ms)
        if ref_day is not None and t.date() == ref_day:
            return f"{t:%H:%M:%S}"
        return f"{t.day} {t:%b} {t:%H:%M:%S}"

    def utc_stamp(self, ms: int) -> str:
        t = self.utc(ms)
        return f"{t:%Y-%m-%d %H:%M:%S}.{t.microsecond // 1000:03d} UTC"

    def day(self, ms: int) -> date:
        d: date = self.local(ms).date()
        return d


def nice_scale(vmax: float, ticks: int = 5) -> tuple[int, int]:
    """(top, step) of an integer axis from 0 showing ``vmax`` with about ``ticks`` steps."""
    if vmax <= 0:
        return 1, 1
    rough = vmax / ticks
    mag: int = 10 ** math.floor(math.log10(rough)) if rough >= 1 else 1
    step = mag
    for m in (1, 2, 5, 10):
        step = max(1, int(m * mag))
        if step >= rough:
            break
    top = math.ceil(vmax / step) * step
    if top == vmax and vmax < 5:
        top += step  # leave headroom above a small peak
    return top, step


def _f(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------------------- charts


def _y_axis(
    lines: list[str], left: float, right: float, top: float, h: float, ymax: int, step: int
) -> None:
    for v in range(0, ymax + 1, step):
        y = top + h - v / ymax * h
        lines.append(
            f'<line class="grid" x1="{_f(left)}" x2="{_f(right)}" y1="{_f(y)}" y2="{_f(y)}"/>'
        )
        lines.append(
            f'<text class="tick" x="{_f(left - 6)}" y="{_f(y + 4)}" text-anchor="end">{num(v)}</text>'
        )


def daily_chart(days: list[DailyInteractions], channels: list[str], clock: Clock) -> str:
    """Stacked bars: Interactions per local day of origin, by channel."""
    height, left, right, top, bottom = 280, 56, 16, 26, 46
    pw, ph = W - left - right, height - top - bottom
    totals = [d.total for d in days]
    ymax, step = nice_scale(max(totals, default=0))
    out = [
        f'<svg class="chart" viewBox="0 0 {W} {height}" width="100%" role="img" '
        f'aria-label="Interactions per day by channel"'
        f"{attrs(data_chart='daily-interactions', data_bars=len(days), data_ymax=ymax)}>",
        f'<rect{attrs(data_role="plot")} x="{left}" y="{top}" width="{pw}" height="{ph}" '
        'class="plot"/>',
    ]
    _y_axis(out, left, left + pw, top, ph, ymax, step)
    n = max(len(days), 1)
    slot = pw / n
    bar_w = min(slot * 0.72, 64)
    for i, d in enumerate(days):
        x = left + i * slot + (slot - bar_w) / 2
        y_base: float = top + ph
        title = f"{d.day:%a %d %b %Y}: {num(d.total)} Interactions" + "".join(
            f"\n  {CHANNEL_LABELS.get(c, c)}: {num(d.by_channel.get(c, 0))}" for c in channels
        )
        out.append(f"<g{attrs(data_bar='day', data_day=d.day.isoformat(), data_value=d.total)}>")
        out.append(f"<title>{esc(title)}</title>")
        for c in channels:
            v = d.by_channel.get(c, 0)
            if v <= 0:
                continue
            h = v / ymax * ph
            y_base -= h
            out.append(
                f'<rect x="{_f(x)}" y="{_f(y_base)}" width="{_f(bar_w)}" height="{_f(h)}" '
                f'fill="{CHANNEL_COLORS.get(c, "#888")}"{attrs(data_channel=c, data_value=v)}/>'
            )
        if slot >= 30:
            out.append(
                f'<text class="barlabel" x="{_f(x + bar_w / 2)}" y="{_f(y_base - 5)}" '
                f'text-anchor="middle">{num(d.total)}</text>'
            )
        cx = x + bar_w / 2
        out.append(
            f'<text class="tick" x="{_f(cx)}" y="{_f(top + ph + 16)}" text-anchor="middle">'
            f"{d.day.day}</text>"
        )
        if slot >= 24:
            out.append(
                f'<text class="tick sub" x="{_f(cx)}" y="{_f(top + ph + 30)}" '
                f'text-anchor="middle">{d.day:%a}</text>'
            )
        out.append("</g>")
    if days:
        out.append(
            f'<text class="axis" x="{left + pw}" y="{height - 4}" text-anchor="end">'
            f"local day of origin, {esc(days[0].day.strftime('%B %Y'))} ({esc(clock.tzname)})</text>"
        )
    out.append(
        f'<line class="axisline" x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}"/>'
    )
    out.append("</svg>")
    return "\n".join(out)


def _time_ticks(t0: int, t1: int, clock: Clock) -> list[tuple[int, str, bool]]:
    """(instant, label, is_midnight) ticks: local midnights, plus local 00/03/06... hours
    on ranges of two days or less (never crowding a midnight label)."""
    ticks: list[tuple[int, str, bool]] = []
    d = clock.day(t0)
    days: list[int] = []
    while True:
        m = local_midnight(d, clock.tz)
        if m > t1:
            break
        if m >= t0:
            days.append(m)
        d += timedelta(days=1)
    n_days = max(1, round((t1 - t0) / 86_400_000))
    every = max(1, math.ceil(n_days / 16))
    for i, m in enumerate(days):
        lt = clock.local(m)
        label = f"{lt:%a} {lt.day} {lt:%b}" if n_days <= 10 else f"{lt.day}"
        if m == t1 and n_days > 1:
            label = ""  # the range's end: its label would run off the plot
        ticks.append((m, label if i % every == 0 else "", True))
    if n_days <= 2:
        hour = 3_600_000
        t = t0 - t0 % hour
        while t < t1:
            local = clock.local(t)
            if (
                t > t0
                and local.minute == 0
                and local.hour % 3 == 0
                and all(abs(t - m) >= 2 * hour for m in days)
            ):
                ticks.append((t, f"{local:%H:%M}", False))
            t += hour
    return sorted(ticks)


def concurrency_chart(tl: Timeline, clock: Clock) -> str:
    """Step area of the largest concurrency per bucket, the capacity line, the peak marked."""
    height, left, right, top, bottom = 250, 48, 16, 30, 40
    pw, ph = W - left - right, height - top - bottom
    ymax, step = nice_scale(max(tl.max_value, tl.peak, tl.capacity or 0))
    span = tl.t1 - tl.t0

    def x(t: int) -> float:
        return left + (min(max(t, tl.t0), tl.t1) - tl.t0) / span * pw

    def y(v: float) -> float:
        return top + ph - v / ymax * ph

    out = [
        f'<svg class="chart" viewBox="0 0 {W} {height}" width="100%" role="img" '
        f'aria-label="{esc(tl.label)}: concurrent calls over time"'
        + attrs(
            data_chart="concurrency",
            data_scope=tl.scope,
            data_source=tl.source,
            data_capacity=tl.capacity,
            data_peak=tl.peak,
        )
        + ">",
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plot"'
        + attrs(data_role="plot", data_t0=tl.t0, data_t1=tl.t1, data_ymax=ymax)
        + "/>",
    ]
    _y_axis(out, left, left + pw, top, ph, ymax, step)
    for t, label, midnight in _time_ticks(tl.t0, tl.t1, clock):
        xx = x(t)
        if midnight:
            out.append(
                f'<line class="daygrid" x1="{_f(xx)}" x2="{_f(xx)}" y1="{top}" y2="{top + ph}"/>'
            )
        if label:
            out.append(
                f'<text class="tick" x="{_f(xx)}" y="{top + ph + 16}" text-anchor="middle">'
                f"{esc(label)}</text>"
            )
    # Series: step area over the buckets.
    pts: list[str] = [f"M{_f(x(tl.t0))},{_f(y(0))}"]
    over: list[str] = []
    for i, v in enumerate(tl.values):
        a = tl.t0 + i * tl.bucket_ms
        b = min(a + tl.bucket_ms, tl.t1)
        pts.append(f"L{_f(x(a))},{_f(y(v))}L{_f(x(b))},{_f(y(v))}")
        if tl.capacity is not None and v > tl.capacity:
            over.append(
                f'<rect class="over" x="{_f(x(a))}" y="{_f(y(v))}" '
                f'width="{_f(max(x(b) - x(a), 0.8))}" height="{_f(y(tl.capacity) - y(v))}"'
                + attrs(data_role="over-capacity", data_value=v, data_at=a)
                + "/>"
            )
    pts.append(f"L{_f(x(tl.t1))},{_f(y(0))}Z")
    out.append(
        f'<path class="series" d="{"".join(pts)}"'
        + attrs(
            data_series="concurrency",
            data_buckets=len(tl.values),
            data_bucket_ms=tl.bucket_ms,
            data_max=tl.max_value,
        )
        + "/>"
    )
    out.extend(over)
    if tl.capacity is not None:
        yc = y(tl.capacity)
        out.append(
            f'<line class="capacity" x1="{left}" x2="{left + pw}" y1="{_f(yc)}" y2="{_f(yc)}"'
            + attrs(data_role="capacity", data_value=tl.capacity)
            + "/>"
        )
        out.append(
            f'<text class="caplabel" x="{left + 6}" y="{_f(yc - 5)}">'
            f"capacity {num(tl.capacity)}</text>"
        )
    if tl.peak_at is not None and tl.peak > 0:
        px, py = x(tl.peak_at), y(tl.peak)
        label = (
            f"peak {num(tl.peak)} · {clock.short(tl.peak_at)} {clock.local(tl.peak_at).tzname()}"
        )
        width = 7.6 * len(label) + 14
        lx = px + 10 if px + 10 + width <= left + pw else px - 10 - width
        ly = max(top - 24, py - 28) if py - 28 >= top - 24 else top - 24
        out.append(
            "<g"
            + attrs(
                data_marker="peak",
                data_at=_rfc3339(tl.peak_at),
                data_at_ms=tl.peak_at,
                data_value=tl.peak,
            )
            + ">"
        )
        out.append(
            f'<line class="peakline" x1="{_f(px)}" x2="{_f(px)}" y1="{top}" y2="{top + ph}"/>'
        )
        out.append(
            f'<rect class="peakbox" x="{_f(lx)}" y="{_f(ly)}" width="{_f(width)}" height="20" '
            'rx="3"/>'
        )
        out.append(
            f'<text class="peaklabel" x="{_f(lx + 6)}" y="{_f(ly + 14)}">{esc(label)}</text>'
        )
        out.append(
            f'<circle class="peakdot" cx="{_f(px)}" cy="{_f(py)}" r="5"'
            + attrs(data_role="peak-dot")
            + "/>"
        )
        out.append("</g>")
    out.append(
        f'<line class="axisline" x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}"/>'
    )
    out.append("</svg>")
    return "\n".join(out)


def route_class_chart(minutes: dict[str, int], total: int) -> str:
    """Horizontal bars: billable minutes by route class."""
    row, left, right, top = 38, 190, 210, 8
    height = top * 2 + row * len(minutes)
    pw = W - left - right
    vmax = max(minutes.values(), default=0)
    out = [
        f'<svg class="chart" viewBox="0 0 {W} {height}" width="100%" role="img" '
        f'aria-label="Billable minutes by route class"'
        + attrs(data_chart="route-class-minutes", data_bars=len(minutes))
        + ">"
    ]
    for i, (rc, v) in enumerate(minutes.items()):
        yy = top + i * row
        w = v / vmax * pw if vmax else 0.0
        share = f"{v / total * 100:.1f} %" if total else "0.0 %"
        out.append(
            f'<text class="rowlabel" x="{left - 10}" y="{_f(yy + row / 2 + 4)}" '
            f'text-anchor="end">{esc(ROUTE_CLASS_LABELS.get(rc, rc))}</text>'
        )
        out.append(
            f'<rect class="track" x="{left}" y="{_f(yy + 7)}" width="{pw}" height="{row - 14}"/>'
        )
        out.append(
            f'<rect x="{left}" y="{_f(yy + 7)}" width="{_f(w)}" height="{row - 14}" '
            f'fill="{ROUTE_CLASS_COLORS.get(rc, "#888")}"'
            + attrs(data_bar="route_class", data_route_class=rc, data_value=v)
            + f"><title>{esc(ROUTE_CLASS_LABELS.get(rc, rc))}: {num(v)} minutes</title></rect>"
        )
        out.append(
            f'<text class="barvalue" x="{_f(left + pw + 10)}" y="{_f(yy + row / 2 + 4)}">'
            f"{num(v)} min · {share}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------- sections


def _rfc3339(ms: int) -> str:
    return ms_to_rfc3339(ms)


def _instant(path: str | None, value: str | None, ms: int | None, clock: Clock) -> str:
    """An instant: local time (with the statement's RFC 3339 UTC value in the markup)."""
    if ms is None or value is None:
        return field(path, None, "—") if path else "—"
    inner = (
        f'<time datetime="{esc(value)}">{esc(clock.stamp(ms))}</time>'
        f'<span class="utc">{esc(clock.utc_stamp(ms))}</span>'
    )
    return field(path, value, inner) if path else inner


def _card(title: str, body: str, note: str = "", cls: str = "") -> str:
    return (
        f'<div class="card {cls}"><div class="card-title">{esc(title)}</div>'
        f'<div class="card-value">{body}</div>'
        + (f'<div class="card-note">{note}</div>' if note else "")
        + "</div>"
    )


def _summary(d: ReportData, clock: Clock) -> str:
    st = d.statement
    v, conc, ch = st["voice"], st["concurrency"], st["charges"]
    total = Decimal(ch["overage_usd"]) + Decimal(ch["surcharge_usd"])
    peak_note = (
        _instant(None, conc["peak_at"], d.evidence[0].peak_at, clock)
        if conc["peak_at"] is not None and d.evidence
        else "no call in progress"
    )
    cards = [
        _card(
            "Interactions",
            field(
                "interactions.total", st["interactions"]["total"], num(st["interactions"]["total"])
            ),
            "24-hour conversations and SmartFlow executions",
        ),
        _card(
            "Messages",
            field("messages.total", st["messages"]["total"], num(st["messages"]["total"])),
            field("messages.segments", st["messages"]["segments"], num(st["messages"]["segments"]))
            + " segments",
        ),
        _card(
            "Calls",
            field("voice.attempts", v["attempts"], num(v["attempts"])),
            field("voice.answered", v["answered"], num(v["answered"])) + " answered",
        ),
        _card(
            "Billable minutes",
            field("voice.billable_minutes", v["billable_minutes"], num(v["billable_minutes"])),
            "answered, non-blocked calls",
        ),
        _card(
            "Billed peak concurrency",
            field("concurrency.peak", conc["peak"], num(conc["peak"])),
            peak_note,
        ),
        _card(
            "Fair-use charges",
            field("charges.total_usd", f"{total:.2f}", usd(f"{total:.2f}")),
            "overage "
            + field("charges.overage_usd", ch["overage_usd"], usd(ch["overage_usd"]))
            + " · surcharge "
            + field("charges.surcharge_usd", ch["surcharge_usd"], usd(ch["surcharge_usd"])),
            "charges" if total else "",
        ),
    ]
    return f'<section class="cards">{"".join(cards)}</section>'


def _row(label: str, cell: str, cls: str = "") -> str:
    return f"<tr{attrs(class_=cls)}><th scope='row'>{label}</th><td class='num'>{cell}</td></tr>"


def _statement_tables(d: ReportData, clock: Clock) -> str:
    st = d.statement
    inter, msgs, v, conc = st["interactions"], st["messages"], st["voice"], st["concurrency"]
    left = [
        _row(
            "Interactions",
            field("interactions.total", inter["total"], num(inter["total"])),
            "total",
        )
    ]
    for c, n in inter["by_channel"].items():
        left.append(
            _row(
                f'<span class="swatch" style="background:{CHANNEL_COLORS.get(c, "#888")}"></span>'
                f"{esc(CHANNEL_LABELS.get(c, c))}",
                field(f"interactions.by_channel.{c}", n, num(n)),
                "sub",
            )
        )
    left.append(
        _row("Messages", field("messages.total", msgs["total"], num(msgs["total"])), "total")
    )
    left.append(
        _row("Segments", field("messages.segments", msgs["segments"], num(msgs["segments"])), "sub")
    )
    right = []
    for key, label in VOICE_FIELDS:
        right.append(
            _row(
                esc(label),
                field(f"voice.{key}", v[key], num(v[key])),
                "total" if key in ("attempts", "billable_minutes") else "sub",
            )
        )
    for rc, n in v["minutes_by_route_class"].items():
        right.append(
            _row(
                f'<span class="swatch" style="background:{ROUTE_CLASS_COLORS.get(rc, "#888")}"></span>'
                f"{esc(ROUTE_CLASS_LABELS.get(rc, rc))} minutes",
                field(f"voice.minutes_by_route_class.{rc}", n, num(n)),
                "sub",
            )
        )
    conc_rows = [
        "<tr><th scope='col'>Scope</th><th scope='col' class='num'>Peak</th>"
        "<th scope='col'>First reached</th><th scope='col' class='num'>Capacity</th></tr>",
        "<tr class='total'><th scope='row'>All trunk groups (billed)</th>"
        f"<td class='num'>{field('concurrency.peak', conc['peak'], num(conc['peak']))}</td>"
        f"<td>{_instant('concurrency.peak_at', conc['peak_at'], _ms(d, 'account'), clock)}</td>"
        f"<td class='num'>{'—' if d.account_capacity is None else num(d.account_capacity)}</td></tr>",
    ]
    for tg, g in conc["trunk_groups"].items():
        base = f"concurrency.trunk_groups.{tg}"
        cap = g["capacity"]
        over = cap is not None and g["peak"] > cap
        conc_rows.append(
            f"<tr{attrs(class_='over' if over else '')}><th scope='row'>Trunk group {esc(tg)}</th>"
            f"<td class='num'>{field(base + '.peak', g['peak'], num(g['peak']))}</td>"
            f"<td>{_instant(base + '.peak_at', g['peak_at'], _ms(d, 'trunk_group:' + tg), clock)}</td>"
            f"<td class='num'>{field(base + '.capacity', cap, 'unlimited' if cap is None else num(cap))}"
            + (' <span class="badge breach">over</span>' if over else "")
            + "</td></tr>"
        )
    return (
        '<section id="statement"><h2>Statement figures</h2>'
        '<div class="two">'
        f'<table class="figures"><caption>Interactions and messages</caption>{"".join(left)}</table>'
        f'<table class="figures"><caption>Voice</caption>{"".join(right)}</table>'
        "</div>"
        f'<table class="figures wide"><caption>Concurrency (peak number of calls occupying ports '
        f"at one instant of the cycle)</caption>{''.join(conc_rows)}</table>"
        "</section>"
    )


def _ms(d: ReportData, scope: str) -> int | None:
    for tl in d.timelines:
        if tl.scope == scope:
            return tl.peak_at
    return None


def _daily_section(d: ReportData, clock: Clock) -> str:
    channels = list(d.statement["interactions"]["by_channel"])
    by_channel = d.statement["interactions"]["by_channel"]
    legend = "".join(
        f'<span class="legend-item"><span class="swatch" style="background:{CHANNEL_COLORS.get(c, "#888")}">'
        f"</span>{esc(CHANNEL_LABELS.get(c, c))} "
        f"<b>{field(f'interactions.by_channel.{c}', by_channel[c], num(by_channel[c]))}</b></span>"
        for c in channels
    )
    if not d.daily:
        body = '<p class="empty">No Interactions in this cycle.</p>'
    else:
        body = f"<figure>{daily_chart(d.daily, channels, clock)}</figure>"
    return (
        '<section id="interactions"><h2>Daily Interactions by channel</h2>'
        f'<p class="lead">Each Interaction counts on the local day ({esc(d.timezone)}) of its '
        "origin: a conversation's first message opens it and it lasts until the end of the next "
        "day; every SmartFlow execution on voice or API is one Interaction.</p>"
        f'{body}<div class="legend">{legend}</div></section>'
    )


def _concurrency_section(d: ReportData, clock: Clock) -> str:
    parts = [
        '<section id="concurrency"><h2>Concurrency against capacity</h2>',
        '<p class="lead">The largest number of calls occupying ports in each '
        f"{_duration(d.timelines[0].bucket_ms)} interval (local time, {esc(d.timezone)}). "
        "The billed peak is the largest number of calls in progress at one instant across all "
        "trunk groups; red marks calls above capacity.</p>",
    ]
    for tl in d.timelines:
        cap = (
            f"capacity {num(tl.capacity)}"
            if tl.capacity is not None
            else (
                "total capacity not configured" if tl.scope == "account" else "unlimited capacity"
            )
        )
        src = (
            "from the call records and the stored per-minute peaks"
            if "concurrency_minute" in tl.source
            else "from the call records"
        )
        if tl.peak == 0:
            src = "no call occupied a port in this cycle"
        parts.append(
            f'<figure class="conc"><figcaption><b>{esc(tl.label)}</b> · peak {num(tl.peak)} · '
            f"{esc(cap)} <span class='muted'>({src})</span></figcaption>"
            f"{concurrency_chart(tl, clock)}</figure>"
        )
    parts.extend(f'<p class="note">{esc(n)}</p>' for n in d.notes)
    parts.append("</section>")
    return "".join(parts)


def _duration(ms: int) -> str:
    minutes = ms // 60_000
    if minutes % 60 == 0:
        h = minutes // 60
        return "hour" if h == 1 else f"{h}-hour"
    return "minute" if minutes == 1 else f"{minutes}-minute"


def _minutes_section(d: ReportData) -> str:
    v = d.statement["voice"]
    return (
        '<section id="minutes"><h2>Minutes by route class</h2>'
        f'<p class="lead">Billable minutes of answered, non-blocked calls started in the cycle '
        f"(each call rounded up to the minute): "
        f"<b>{field('voice.billable_minutes', v['billable_minutes'], num(v['billable_minutes']))}</b> "
        "in total.</p>"
        f"<figure>{route_class_chart(v['minutes_by_route_class'], v['billable_minutes'])}</figure>"
        "</section>"
    )


def _threshold(rule: str, t: float | int) -> str:
    op = "≤" if RULES[rule].kind == "max" else "≥"
    text = f"{float(t):.2f}" if RULES[rule].ratio else num(int(t))
    return f"{op} {text}"


def _fu_cells(r: FairUseRow, *, value: bool = True, threshold: bool = True) -> str:
    a = {"data_rule": r.rule, "data_scope": r.scope}
    cells = []
    if value:
        extra = ""
        if r.acd_seconds is not None:
            extra = (
                f'<br><span class="muted">mean </span><span{attrs(**a, data_field="acd_seconds", data_value=raw(r.acd_seconds))}>'
                f"{r.acd_seconds:,.4f}</span><span class='muted'> s</span>"
            )
        cells.append(
            f"<td class='num'><span{attrs(**a, data_field='value', data_value=raw(r.value))}>"
            f"{rule_value(r.rule, r.value)}</span>{extra}</td>"
        )
    if threshold:
        cells.append(
            f"<td class='num'{attrs(**a, data_field='threshold', data_value=raw(r.threshold))}>"
            f"{_threshold(r.rule, r.threshold)}"
            + (" <span class='muted'>and &gt; 30 s</span>" if r.rule == "call_completion" else "")
            + "</td>"
        )
    cells.append(
        f"<td{attrs(**a, data_field='status', data_value=r.status)}>"
        f'<span class="badge {esc(r.status)}">{esc(STATUS_LABELS.get(r.status, r.status))}</span></td>'
    )
    charged = Decimal(r.charge_usd) != 0
    cells.append(
        f"<td{attrs(**a, data_field='charge_usd', data_value=r.charge_usd, class_='num charge' if charged else 'num zero')}>"
        f"{usd(r.charge_usd)}</td>"
    )
    return "".join(cells)


def _fair_use_section(d: ReportData) -> str:
    if not d.fair_use:
        return (
            '<section id="fair-use"><h2>Fair use</h2><p class="empty">No fair-use rule applies '
            "to this account (no policy preset).</p></section>"
        )
    shared = [r for r in d.fair_use if not r.scope.startswith("user:")]
    per_user = [r for r in d.fair_use if r.scope.startswith("user:")]
    rows = [
        "<thead><tr><th scope='col'>Rule</th><th scope='col'>Scope</th>"
        "<th scope='col' class='num'>Value</th><th scope='col' class='num'>Passes when</th>"
        "<th scope='col'>Status</th><th scope='col' class='num'>Charge</th></tr></thead><tbody>"
    ]
    for r in shared:
        rows.append(
            f"<tr{attrs(data_rule=r.rule, data_scope=r.scope, class_='hl-' + r.status)}>"
            f"<th scope='row'>{esc(RULE_TITLES.get(r.rule, r.rule))}"
            f"<br><code>{esc(r.rule)}</code></th><td>{esc(_scope_text(r.scope))}</td>"
            f"{_fu_cells(r)}</tr>"
        )
    rows.append("</tbody>")
    parts = [
        '<section id="fair-use"><h2>Fair use</h2>',
        '<p class="lead">Month-to-date values at the end of the cycle, for the policies '
        f"{esc(', '.join(d.policies) or 'none')}. A rule is only judged once its sample floor "
        "is met (otherwise: insufficient data).</p>",
        f'<table class="fairuse">{"".join(rows)}</table>' if shared else "",
    ]
    if per_user:
        rules = [
            r for r in ("minutes_per_user", "bundle_sharing") if any(x.rule == r for x in per_user)
        ]
        users = sorted({r.scope for r in per_user}, key=_scope_sort_key)
        idx = {(r.rule, r.scope): r for r in per_user}
        head = ["<th scope='col'>User</th>"]
        for rule in rules:
            head.append(
                f"<th scope='col' class='num'>{esc(RULE_TITLES[rule])}<br>"
                f"<span class='muted'>{esc(_threshold(rule, _thr(rule)))}</span></th>"
                "<th scope='col'>Status</th><th scope='col' class='num'>Charge</th>"
            )
        body = []
        for scope in users:
            cells = []
            status = "ok"
            for rule in rules:
                row = idx.get((rule, scope))
                if row is None:
                    cells.append("<td></td><td></td><td></td>")
                    continue
                cells.append(_fu_cells(row, threshold=False))
                if row.status == "breach" or (row.status == "warning" and status != "breach"):
                    status = row.status
            body.append(
                f"<tr{attrs(class_='hl-' + status)}><th scope='row'>{esc(scope[5:])}</th>"
                f"{''.join(cells)}</tr>"
            )
        parts.append(
            f'<table class="fairuse users"><caption>Per-user rules ({num(len(users))} users with '
            f"calls in the cycle)</caption><thead><tr>{''.join(head)}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
        )
    parts.append("</section>")
    return "".join(parts)


def _thr(rule: str) -> float | int:
    t = RULES[rule].threshold
    return int(t) if t.denominator == 1 else float(t)


def _scope_text(scope: str) -> str:
    if scope == "account":
        return "account"
    kind, _, ident = scope.partition(":")
    return f"trunk group {ident}" if kind == "trunk_group" else f"user {ident}"


def _scope_sort_key(scope: str) -> tuple[str, int, str]:
    """user:u-1-2 before user:u-1-10 (natural order for display)."""
    head, _, tail = scope.rpartition("-")
    return (head, int(tail), scope) if tail.isdigit() else (scope, 0, scope)


def _charges_section(d: ReportData) -> str:
    ch = d.statement["charges"]
    total = Decimal(ch["overage_usd"]) + Decimal(ch["surcharge_usd"])
    parts = ['<section id="charges"><h2>Charges and how they are computed</h2>']
    if not d.charges:
        parts.append('<p class="empty">No fair-use charge in this cycle.</p>')
    for b in d.charges:
        parts.append(_basis(b))
    parts.append(
        '<table class="totals">'
        f"<tr><th scope='row'>Overage (minutes per user)</th><td class='num'>"
        f"{field('charges.overage_usd', ch['overage_usd'], usd(ch['overage_usd']))}</td></tr>"
        f"<tr><th scope='row'>Surcharges (RBOC mix, call completion)</th><td class='num'>"
        f"{field('charges.surcharge_usd', ch['surcharge_usd'], usd(ch['surcharge_usd']))}</td></tr>"
        f"<tr class='grand'><th scope='row'>Total fair-use charges</th><td class='num'>"
        f"{field('charges.total_usd', f'{total:.2f}', usd(f'{total:.2f}'))}</td></tr>"
        "</table>"
        '<p class="note">Amounts in US dollars, computed exactly and rounded half-up to the cent '
        "per rule, as in the statement.</p></section>"
    )
    return "".join(parts)


def _basis(b: ChargeBasis) -> str:
    figures = "".join(
        f"<tr><th scope='row'>{esc(k)}</th><td class='num'>{esc(v)}</td></tr>" for k, v in b.figures
    )
    formula = (
        f"<span class='q'>{num(b.quantity)}</span> {esc(b.quantity_label)} &times; "
        f"<span class='q'>${b.rate}</span> = <b>{usd(f'{b.amount:.2f}')}</b>"
    )
    return (
        "<div class='basis'"
        + attrs(
            data_charge_rule=b.rule,
            data_scope=b.scope,
            data_kind=b.kind,
            data_quantity=b.quantity,
            data_rate=str(b.rate),
            data_amount=f"{b.amount:.2f}",
        )
        + ">"
        f"<h3>{esc(RULE_TITLES.get(b.rule, b.rule))} — {esc(_scope_text(b.scope))} "
        f"<span class='badge breach'>{esc(b.kind)}</span></h3>"
        f"<table class='figures'>{figures}</table>"
        f"<p class='formula'>{formula}</p></div>"
    )


def _evidence_section(d: ReportData, clock: Clock) -> str:
    parts = [
        '<section id="evidence"><h2>Evidence: calls in progress at each peak</h2>',
        '<p class="lead">For each peak, every call occupying a port at that instant '
        "(started at or before it, ending after it). Their number is the peak.</p>",
    ]
    if not d.evidence:
        parts.append('<p class="empty">No call occupied a port in this cycle.</p>')
    for ev in d.evidence:
        parts.append(_evidence_table(ev, clock))
    parts.append("</section>")
    return "".join(parts)


def _evidence_table(ev: PeakEvidence, clock: Clock) -> str:
    ref = clock.day(ev.peak_at)
    rows = []
    for i, c in enumerate(ev.calls, 1):
        rows.append(_call_row(i, c, clock, ref, reached=c.started_at == ev.peak_at))
    cap = "" if ev.capacity is None else f" · capacity {num(ev.capacity)}"
    return (
        "<div class='evidence'"
        + attrs(
            data_evidence=ev.scope,
            data_at=_rfc3339(ev.peak_at),
            data_peak=ev.peak,
            data_calls=len(ev.calls),
        )
        + ">"
        f"<h3>{esc(ev.label)}: {num(ev.peak)} {'call' if ev.peak == 1 else 'calls'} at "
        f"<time datetime='{esc(_rfc3339(ev.peak_at))}'>{esc(clock.stamp(ev.peak_at))}</time>"
        f" <span class='muted'>({esc(clock.utc_stamp(ev.peak_at))}){esc(cap)}</span></h3>"
        "<table class='calls'><thead><tr><th class='num'>#</th><th>Call</th><th>Trunk group</th>"
        "<th>User</th><th>Direction</th><th>Route class</th><th>Started</th><th>Answered</th>"
        "<th>Ends</th><th>Flags</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _call_row(i: int, c: CallInProgress, clock: Clock, ref: date, *, reached: bool) -> str:
    tg = (
        c.trunk_group
        if c.trunk_group == c.capacity_group
        else f"{c.trunk_group} → {c.capacity_group}"
    )
    flags = []
    if reached:
        flags.append('<span class="badge peak">started at the peak instant</span>')
    if c.over_capacity:
        flags.append('<span class="badge breach">over capacity</span>')
    if c.timed_out:
        flags.append('<span class="badge warning">timed out</span>')
    return (
        "<tr"
        + attrs(
            data_call_id=c.call_id,
            data_started_at=c.started_at,
            data_end_at=c.end_at,
            class_="reached" if reached else "",
        )
        + ">"
        f"<td class='num'>{i}</td><td><code>{esc(c.call_id)}</code></td><td>{esc(tg)}</td>"
        f"<td>{esc(c.user or '—')}</td><td>{esc(c.direction)}</td>"
        f"<td>{esc(ROUTE_CLASS_SHORT.get(c.route_class, c.route_class))}</td>"
        f"<td>{esc(clock.time(c.started_at, ref))}</td>"
        f"<td>{esc('—' if c.answered_at is None else clock.time(c.answered_at, ref))}</td>"
        f"<td>{esc('open' if c.end_at is None else clock.time(c.end_at, ref))}</td>"
        f"<td>{''.join(flags)}</td></tr>"
    )


# ------------------------------------------------------------------------------ page

CSS = """
:root{--ink:#1d2330;--muted:#5f6b7a;--line:#dde2ea;--bg:#f4f6f9;--accent:#2f6fdb;
--ok:#2b8a3e;--warn:#b7791f;--bad:#c92a2a;--na:#6b7280}
*{box-sizing:border-box}
html{-webkit-print-color-adjust:exact;print-color-adjust:exact}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
.page{max-width:1040px;margin:24px auto;background:#fff;padding:32px 40px 40px;
box-shadow:0 1px 4px rgba(0,0,0,.08);border-radius:6px}
header{border-bottom:3px solid var(--accent);padding-bottom:14px;margin-bottom:20px}
header h1{margin:0 0 4px;font-size:26px;letter-spacing:-.01em}
header .meta{display:flex;flex-wrap:wrap;gap:6px 28px;color:var(--muted)}
header .meta b{color:var(--ink);font-weight:600}
h2{font-size:19px;margin:34px 0 8px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:18px 0 6px}
.lead,.note{color:var(--muted);margin:4px 0 10px;max-width:860px}
.note{font-size:12.5px}
.muted{color:var(--muted);font-weight:normal}
.empty{color:var(--muted);font-style:italic}
.cards{display:grid;grid-template-columns:repeat(3,1fr);gap:12px}
.card{border:1px solid var(--line);border-radius:6px;padding:10px 14px;break-inside:avoid}
.card-title{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.card-value{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums;margin:2px 0}
.card-note{font-size:12.5px;color:var(--muted)}
.card.charges .card-value{color:var(--bad)}
.card-note time{display:block;color:var(--ink)}
.card-note .utc{display:block}
.two{display:grid;grid-template-columns:1fr 1fr;gap:24px;align-items:start}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:6px 0;caption-side:top}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{font-size:12px;color:var(--muted);font-weight:600;border-bottom:2px solid var(--line)}
th[scope=row]{font-weight:normal}
.num{text-align:right;white-space:nowrap}
tr.total th,tr.total td{font-weight:650}
tr.sub th{padding-left:22px}
table.figures.wide{margin-top:14px}
td .utc{display:block;font-size:12px;color:var(--muted)}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;
vertical-align:baseline}
figure{margin:8px 0 4px;break-inside:avoid}
figcaption{font-size:13.5px;margin-bottom:2px}
.legend{display:flex;flex-wrap:wrap;gap:6px 22px;font-size:13px;margin:2px 0 0 56px}
svg.chart{display:block;overflow:visible;font-family:inherit}
svg .plot{fill:#fbfcfe;stroke:none}
svg .grid{stroke:#e6e9ef;stroke-width:1}
svg .daygrid{stroke:#cfd6e1;stroke-width:1;stroke-dasharray:2 3}
svg .axisline{stroke:#8a94a3;stroke-width:1}
svg .tick{font-size:11px;fill:#5f6b7a}
svg .tick.sub{font-size:10px;fill:#8a94a3}
svg .axis{font-size:11px;fill:#5f6b7a}
svg .barlabel{font-size:11px;fill:#1d2330;font-weight:600}
svg .series{fill:rgba(47,111,219,.18);stroke:#2f6fdb;stroke-width:1.2;stroke-linejoin:round}
svg .over{fill:rgba(201,42,42,.55)}
svg .capacity{stroke:#c92a2a;stroke-width:1.5;stroke-dasharray:6 4}
svg .caplabel{font-size:11.5px;fill:#c92a2a;font-weight:600}
svg .peakline{stroke:#1d2330;stroke-width:1;stroke-dasharray:3 3}
svg .peakdot{fill:#1d2330;stroke:#fff;stroke-width:2}
svg .peakbox{fill:#1d2330}
svg .peaklabel{font-size:12px;fill:#fff;font-weight:600}
svg .rowlabel{font-size:13px;fill:#1d2330}
svg .barvalue{font-size:13px;fill:#1d2330;font-variant-numeric:tabular-nums}
svg .track{fill:#f0f2f6}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
white-space:nowrap;border:1px solid transparent}
.badge.ok{background:#e6f4ea;color:var(--ok)}
.badge.warning{background:#fdf3e1;color:var(--warn)}
.badge.breach{background:#fde8e8;color:var(--bad)}
.badge.peak{background:#e8eefc;color:#1f4fa8}
tr.reached td{font-weight:600}
.badge.insufficient_data{background:#eef0f3;color:var(--na)}
table.fairuse code{font-size:11.5px;color:var(--muted)}
table.fairuse td.zero{color:var(--muted)}
table.fairuse td.charge{color:var(--bad);font-weight:650}
tr.hl-breach{background:#fff7f7}
tr.hl-warning{background:#fffbf0}
table.users{margin-top:16px}
table.users td,table.users th{padding:3px 8px}
.basis{border:1px solid var(--line);border-left:4px solid var(--bad);border-radius:4px;
padding:4px 14px 10px;margin:12px 0;break-inside:avoid}
.basis h3{margin:8px 0 4px}
.basis table{width:auto;min-width:420px}
.formula{font-size:15px;margin:8px 0 0}
.formula .q{font-variant-numeric:tabular-nums;font-weight:600}
table.totals{width:auto;min-width:420px;margin-top:14px}
table.totals tr.grand th,table.totals tr.grand td{font-weight:700;border-top:2px solid var(--ink)}
.evidence{margin-bottom:14px}
table.calls{font-size:12.5px}
table.calls td{white-space:nowrap}
table.calls code{font-size:12px}
footer{margin-top:36px;padding-top:10px;border-top:1px solid var(--line);color:var(--muted);
font-size:12px}
@media (max-width:760px){.cards{grid-template-columns:1fr 1fr}.two{grid-template-columns:1fr}}
@page{size:A4;margin:12mm}
@media print{
body{background:#fff;font-size:11.5px}
.page{max-width:none;margin:0;padding:0;box-shadow:none;border-radius:0}
h2,h3,.lead,figcaption,caption{break-after:avoid}
#interactions,.basis,.evidence h3{break-inside:avoid}
thead{display:table-header-group}
tr{break-inside:avoid}
section#charges,section#evidence{break-before:page}
}
"""


def render_html(d: ReportData) -> str:
    """The whole page (UTF-8 text)."""
    clock = Clock(d.timezone)
    st = d.statement
    start_local = clock.local(d.cycle_start)
    end_local = clock.local(d.cycle_end)
    period = f"{start_local.day} {start_local:%b %Y %H:%M} &ndash; {end_local.day} {end_local:%b %Y %H:%M}"
    title = f"Usage statement · {d.account} · {start_local:%B %Y}"
    statement_json = json.dumps(st, indent=1).replace("</", "<\\/")
    body = [
        "<header>",
        f"<h1>{esc(title)}</h1>",
        '<div class="meta">',
        f"<span>Account <b{attrs(data_field='account', data_value=st['account'])}>{esc(st['account'])}</b></span>",
        f"<span>Billing cycle <b{attrs(data_field='cycle', data_value=st['cycle'])}>{esc(st['cycle'])}</b></span>",
        f"<span>Period <b>{period}</b></span>",
        f"<span>Time zone <b{attrs(data_field='timezone', data_value=st['timezone'])}>{esc(st['timezone'])}</b></span>",
        "</div></header>",
        _summary(d, clock),
        _statement_tables(d, clock),
        _daily_section(d, clock),
        _concurrency_section(d, clock),
        _minutes_section(d),
        _fair_use_section(d),
        _charges_section(d),
        _evidence_section(d, clock),
        "<footer>Figures are those of <code>metering statement --account "
        f"{esc(d.account)} --cycle {esc(d.cycle)}</code> (embedded below as JSON); "
        "times are local to the account's time zone unless marked UTC. "
        "Definitions: SPEC sections 4 to 6 (Interactions, calls, minutes and concurrency, "
        "fair use).</footer>",
        f'<script type="application/json" id="statement-json">{statement_json}</script>',
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f'<body><main class="page">{"".join(body)}</main></body></html>\n'
    )
