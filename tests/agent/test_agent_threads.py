"""The thread governor (appliance/agent/threads.py): every core while the
machine is idle, half of them while something else wants the CPU, judged
from the time of each generated token. The tests with the real model are in
test_agent_llama.py; these hold the rule itself, on a clock the test moves."""

from __future__ import annotations

from appliance.agent.threads import HOLD_S, ThreadGovernor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_idle_tokens_keep_every_core() -> None:
    gov = ThreadGovernor(4, clock=Clock())
    assert (gov.full, gov.half, gov.threads()) == (4, 2, 4)
    # An idle machine's tokens vary, now and then by 1.7x: never a reason to
    # give up cores.
    for seconds in [0.045, 0.050, 0.075, 0.072, 0.044, 0.060, 0.048] * 5:
        assert gov.token(4, seconds) == 4
    assert gov.contended == 0


def test_slow_tokens_now_and_then_are_hiccups_three_in_a_row_is_contention() -> None:
    clock = Clock()
    gov = ThreadGovernor(2, clock=clock)
    gov.token(2, 0.045)
    assert gov.token(2, 0.300) == 2  # a slow token: a hiccup
    assert gov.token(2, 0.400) == 2  # two
    assert gov.token(2, 0.046) == 2
    assert gov.token(2, 0.190) == 2
    assert gov.token(2, 0.120) == 2
    assert gov.token(2, 0.095) == 1  # three in a row: something else runs
    assert gov.contended == 1
    # Tokens on half the cores say nothing about contention on all of them.
    assert gov.token(1, 5.0) == 1
    clock.now += HOLD_S - 1
    assert gov.threads() == 1
    clock.now += 1
    assert gov.threads() == 2  # every core is tried again
    assert gov.token(2, 0.044) == 2
    assert gov.contended == 1


def test_the_fastest_token_is_the_yardstick_even_if_the_first_was_slow() -> None:
    gov = ThreadGovernor(2, clock=Clock())
    for seconds in (0.4, 0.5, 0.45):  # started on a busy machine: nothing to compare
        assert gov.token(2, seconds) == 2
    gov.token(2, 0.045)  # an idle moment sets the yardstick
    gov.token(2, 0.2)
    gov.token(2, 0.2)
    assert gov.token(2, 0.2) == 1


def test_a_fixed_number_of_threads_never_changes() -> None:
    for gov in (ThreadGovernor(3, 3, clock=Clock()), ThreadGovernor(1, clock=Clock())):
        gov.token(gov.full, 0.01)
        for _ in range(5):
            assert gov.token(gov.full, 10.0) == gov.full
        assert gov.half == gov.full and gov.contended == 0
