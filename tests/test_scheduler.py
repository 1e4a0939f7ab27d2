"""The virtual-time scheduler: ordering, FIFO ties, re-arming, `until`, RESOLUTION."""

from __future__ import annotations

from collections.abc import Callable

from quicmig.sim.scheduler import RESOLUTION, Scheduler


class FakeTimer:
    """A component with a settable timer that counts how often it was handled."""

    def __init__(self, timer: float | None) -> None:
        self.timer = timer
        self.handled: list[float] = []

    def get_timer(self) -> float | None:
        return self.timer

    def handle_timer(self, now: float) -> None:
        self.handled.append(now)


def drain(sched: Scheduler, until: float = float("inf")) -> list[tuple[float, object]]:
    """Step until nothing is due by `until`; run callbacks; return (time, item) in order."""
    seen: list[tuple[float, object]] = []
    while (item := sched.step(until)) is not None:
        seen.append((sched.now, item))
        if isinstance(item, FakeTimer):
            item.handle_timer(sched.now)
        elif callable(item):
            item()
    return seen


def recorder(log: list[tuple[str, float]], sched: Scheduler, name: str) -> Callable[[], None]:
    def callback() -> None:
        log.append((name, sched.now))

    return callback


def test_callbacks_run_in_time_order_and_advance_now() -> None:
    sched = Scheduler()
    log: list[tuple[str, float]] = []
    for name, when in [("c", 3.0), ("a", 1.0), ("d", 4.5), ("b", 2.0)]:
        sched.call_at(when, recorder(log, sched, name))
    drain(sched)
    assert log == [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.5)]
    assert sched.now == 4.5
    assert sched.pending == 0


def test_equal_times_run_in_fifo_order() -> None:
    sched = Scheduler()
    log: list[tuple[str, float]] = []
    names = [f"n{i}" for i in range(50)]
    for name in names:
        sched.call_at(1.0, recorder(log, sched, name))
    sched.call_at(0.5, recorder(log, sched, "early"))
    drain(sched)
    assert [name for name, _ in log] == ["early", *names]
    assert all(when == 1.0 for name, when in log if name != "early")


def test_call_in_the_past_runs_now_not_back_in_time() -> None:
    sched = Scheduler()
    log: list[tuple[str, float]] = []
    sched.call_at(2.0, lambda: sched.call_at(1.0, recorder(log, sched, "late")))
    drain(sched)
    assert log == [("late", 2.0)]


def test_step_stops_at_until_and_keeps_later_items() -> None:
    sched = Scheduler()
    log: list[tuple[str, float]] = []
    sched.call_at(1.0, recorder(log, sched, "a"))
    sched.call_at(2.0, recorder(log, sched, "b"))  # exactly at `until`: due
    sched.call_at(2.000001, recorder(log, sched, "c"))
    drain(sched, until=2.0)
    assert log == [("a", 1.0), ("b", 2.0)]
    assert sched.now == 2.0  # not advanced to the item that was not due
    assert sched.step(1.5) is None
    assert sched.now == 2.0
    drain(sched, until=10.0)
    assert log[-1] == ("c", 2.000001)


def test_arm_fires_component_at_its_timer() -> None:
    sched = Scheduler()
    comp = FakeTimer(5.0)
    sched.arm(comp)
    assert drain(sched) == [(5.0, comp)]
    assert comp.handled == [5.0]


def test_rearm_earlier_makes_later_entry_stale() -> None:
    sched = Scheduler()
    comp = FakeTimer(5.0)
    sched.arm(comp)
    comp.timer = 3.0
    sched.arm(comp)
    comp_seen = drain(sched)
    # Fired once at 3.0; the entry for 5.0 was skipped as stale (the timer still says 3.0).
    assert comp_seen == [(3.0, comp)]


def test_rearm_later_makes_earlier_entry_stale() -> None:
    sched = Scheduler()
    comp = FakeTimer(3.0)
    sched.arm(comp)
    comp.timer = 7.0
    sched.arm(comp)
    assert sched.step(5.0) is None  # the 3.0 entry is stale
    assert drain(sched) == [(7.0, comp)]


def test_disarm_with_none_timer() -> None:
    sched = Scheduler()
    comp = FakeTimer(1.0)
    sched.arm(comp)
    comp.timer = None
    sched.arm(comp)
    assert drain(sched) == []
    assert comp.handled == []


def test_arming_twice_at_same_time_fires_once() -> None:
    sched = Scheduler()
    comp = FakeTimer(2.0)
    for _ in range(5):
        sched.arm(comp)
    assert drain(sched) == [(2.0, comp)]


def test_two_components_do_not_make_each_other_stale() -> None:
    sched = Scheduler()
    first, second = FakeTimer(2.0), FakeTimer(1.0)
    sched.arm(first)
    sched.arm(second)
    assert drain(sched) == [(1.0, second), (2.0, first)]


def test_handled_timer_still_due_moves_forward_by_resolution() -> None:
    sched = Scheduler()
    comp = FakeTimer(1.0)
    sched.arm(comp)
    assert sched.step(10.0) is comp
    assert sched.now == 1.0
    comp.handle_timer(sched.now)
    # The component still reports 1.0 (floating point made it "not quite due"): with
    # handled=True it fires again one RESOLUTION later instead of spinning at 1.0.
    sched.arm(comp, handled=True)
    assert sched.step(1.0) is None
    assert sched.step(10.0) is comp
    assert sched.now == 1.0 + RESOLUTION


def test_unhandled_arm_at_now_fires_at_now() -> None:
    sched = Scheduler()
    sched.call_at(1.0, lambda: None)
    drain(sched)
    comp = FakeTimer(0.5)  # already overdue: runs at the current time, never in the past
    sched.arm(comp)
    assert drain(sched) == [(1.0, comp)]


def test_handled_future_timer_is_not_moved() -> None:
    sched = Scheduler()
    sched.call_at(1.0, lambda: None)
    drain(sched)
    comp = FakeTimer(1.25)
    sched.arm(comp, handled=True)
    assert drain(sched) == [(1.25, comp)]
