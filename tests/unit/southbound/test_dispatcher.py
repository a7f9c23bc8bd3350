"""Where a change waits: its latency split into the dispatcher's stages (stage_split)."""

from __future__ import annotations

import pytest

from alcor.southbound.dispatcher import Metrics, stage_split

# A batch's instants: woke, started (slot), read (after the linger), planned, subscribed, sent,
# picked up by the committer.
MARKS = (10.0, 10.5, 10.6, 10.7, 10.75, 10.9, 11.0)


def test_a_change_committed_before_the_producer_woke_waits_through_every_stage() -> None:
    split = stage_split(9.0, MARKS)
    assert len(split) == len(Metrics.STAGES)
    assert split == pytest.approx((1.0, 0.5, 0.1, 0.1, 0.05, 0.15, 0.1))


def test_a_change_committed_while_the_batch_lingered_waits_only_for_the_rest() -> None:
    split = stage_split(10.55, MARKS)
    assert split == pytest.approx((0.0, 0.0, 0.05, 0.1, 0.05, 0.15, 0.1))
    assert sum(split) == pytest.approx(MARKS[-1] - 10.55)


def test_marks_out_of_order_never_make_a_stage_negative() -> None:
    # The clock is wall time (a change's ts): a step backwards must not show as negative waits.
    split = stage_split(10.0, (10.2, 10.1, 10.3, 10.3, 10.4, 10.45, 10.5))
    assert min(split) >= 0.0
    assert sum(split) == pytest.approx(0.5)
