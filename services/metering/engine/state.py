"""The engine's per-account state: plain msgspec structs, serialisable with msgpack.

Memory is bounded by time, not by history: a call leaves once it is final and its
interval ends before the settle frontier (watermark - 2 x max_call_duration - allowed
lateness), an interaction once the watermark passes its deadline + allowed lateness, a
dedupe key once it is older than the dedupe horizon, an execution after the dedupe
horizon. Cycle counters (a few integers per user, rule and capacity group) stay for
``cycle_retention`` cycles.
"""

from __future__ import annotations

from msgspec import Struct, field


class Piece(Struct, array_like=True):
    """One event that describes part of a call, with its sort key (time, source, id).

    ``raw`` is kept while the call is in memory so that a piece that loses to a smaller
    key later can still be dead-lettered with its original bytes."""

    time: int
    src: str
    id: str
    raw: bytes | None

    def key(self) -> tuple[int, str, str]:
        return (self.time, self.src, self.id)


class Call(Struct, kw_only=True):
    """One call and every event describing it.

    ``started``/``answered``/``ended`` are the winning lifecycle events, ``cdr`` the winning
    CDR (with its times in ``cdr_times``). A lifecycle ``started`` beats any CDR. The
    derived ``start``/``answer``/``end`` are what the rules use; ``start`` None means only
    answered/ended have been seen so far (a "shell").
    """

    call_id: str
    trunk_group: str = ""
    group: str = ""
    direction: str = ""
    route_class: str = ""
    user: str | None = None
    from_: str | None = None
    to: str | None = None
    region: str | None = None
    carrier_class: str = "unknown"
    lca: str | None = None
    blocked: bool = False
    described_by: str = "lifecycle"
    start: int | None = None
    key_src: str = ""
    key_id: str = ""
    answer: int | None = None
    end: int | None = None
    cycle: str = ""
    over: bool = False
    timed_out: bool = False
    exceeded_sent: bool = False
    contributes: bool = False
    started: Piece | None = None
    answered: Piece | None = None
    ended: Piece | None = None
    cdr: Piece | None = None
    cdr_times: tuple[int, int | None, int] | None = None


class Interaction(Struct, kw_only=True):
    id: str
    channel: str
    business: str | None
    remote: str | None
    origin: int
    deadline: int
    items: int
    last_item: int
    cycle: str
    closed: bool = False
    #: the time of every item, sorted (empty in snapshots taken before it was kept): a
    #: late item can split the chain again exactly (``Engine._conversation_item``)
    times: list[int] = field(default_factory=list)


class Execution(Struct, kw_only=True):
    id: str
    flow_id: str
    channel: str
    time: int
    cycle: str
    nlp_uses: int = 0


class PendingNlp(Struct, kw_only=True):
    time: int
    raws: list[bytes]


class Peaks(Struct, kw_only=True):
    """Peaks of one cycle: ``account``/``groups`` as (value, first instant)."""

    account: tuple[int, int | None] = (0, None)
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    cps: int = 0


class CycleState(Struct, kw_only=True):
    """Month-to-date counters of one cycle (sums are maintained add/retract)."""

    attempts: int = 0
    answered: int = 0
    blocked: int = 0
    timed_out: int = 0
    over_capacity: int = 0
    minutes: dict[str, int] = field(default_factory=dict)
    interactions: dict[str, int] = field(default_factory=dict)
    messages: int = 0
    segments: int = 0
    user_calls: dict[str, int] = field(default_factory=dict)
    user_minutes: dict[str, int] = field(default_factory=dict)
    group_calls: dict[str, int] = field(default_factory=dict)
    lca: dict[str, dict[str, int]] = field(default_factory=dict)
    rboc: int = 0
    itoc: int = 0
    out_dld: int = 0
    out_dld_akhi: int = 0
    toll_free: int = 0
    out_attempts: int = 0
    out_answered: int = 0
    out_answer_ms: int = 0
    executions: int = 0
    nlp_executions: int = 0
    settled: Peaks = field(default_factory=Peaks)
    live: Peaks = field(default_factory=Peaks)
    # what was last published, so only changes are re-emitted
    sent_counters: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    sent_flags: dict[str, int] = field(default_factory=dict)
    sent_peaks: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    sent_voice: tuple[int, ...] = ()


class AccountState(Struct, kw_only=True):
    account: str
    watermark: int = -(2**62)
    seen: dict[str, int] = field(default_factory=dict)
    #: (time, key) of ``seen`` in arrival order; entries before ``seen_head`` are expired
    seen_log: list[tuple[int, str]] = field(default_factory=list)
    seen_head: int = 0
    calls: dict[str, Call] = field(default_factory=dict)
    #: calls that left memory (final) -> the watermark at which they are forgotten: a
    #: second description arriving before that is a ``duplicate_call``
    final_calls: dict[str, int] = field(default_factory=dict)
    conversations: dict[str, list[Interaction]] = field(default_factory=dict)
    executions: dict[str, Execution] = field(default_factory=dict)
    pending_nlp: dict[str, PendingNlp] = field(default_factory=dict)
    cycles: dict[str, CycleState] = field(default_factory=dict)
    settled_to: int | None = None
    #: live-sweep checkpoint: peaks of [settled_to, prefix_at), valid while no interval
    #: changes before ``dirty_from``
    prefix_at: int | None = None
    prefix: dict[str, Peaks] = field(default_factory=dict)
    dirty_from: int = -(2**62)
    sent_minutes: dict[str, dict[int, int]] = field(default_factory=dict)
    timeouts: list[tuple[int, str]] = field(default_factory=list)
    expiries: list[tuple[int, int, str]] = field(default_factory=list)
    dirty_calls: bool = False
