"""`wait_for` returns the first truthy value, and its timeout says what it waited for and saw."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from torghut_localstack.wait import NotYet, WaitTimeout, wait_for

pytestmark = pytest.mark.unit


def test_returns_the_first_truthy_value() -> None:
    values: Iterator[object] = iter([None, 0, [], "ready"])
    assert wait_for(lambda: next(values), timeout=5, interval=0, what="ready") == "ready"


def test_timeout_names_the_goal_and_the_last_value() -> None:
    counter = itertools.count()

    with pytest.raises(WaitTimeout, match=r"waiting for the answer; last saw: \[\]") as caught:
        wait_for(lambda: [] if next(counter) >= 0 else None, timeout=0.05, interval=0.01, what="the answer")

    assert caught.value.what == "the answer"


def test_timeout_shows_the_last_exception_and_chains_it() -> None:
    def failing() -> bool:
        raise NotYet("3 of 4 replicas ready")

    with pytest.raises(WaitTimeout, match="last saw: NotYet: 3 of 4 replicas ready") as caught:
        wait_for(failing, timeout=0.05, interval=0.01, what="replicas")

    assert isinstance(caught.value.__cause__, NotYet)


def test_an_exception_outside_retry_on_propagates_at_once() -> None:
    calls = itertools.count()

    def broken() -> bool:
        next(calls)
        raise AssertionError("node NotReady")

    with pytest.raises(AssertionError, match="node NotReady"):
        wait_for(broken, timeout=5, interval=0.01, what="node", retry_on=(OSError,))

    assert next(calls) == 1


def test_runs_at_least_once_even_with_no_time() -> None:
    assert wait_for(lambda: True, timeout=0, what="anything") is True
