"""The one retry policy: a command is tried again only when it provably did not run."""

from __future__ import annotations

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon.retry import Step, Verdict, judge


@pytest.mark.parametrize(
    "step, alive, refused, from_spare, verdict",
    [
        (Step.OPEN, True, True, False, Verdict.RETRY_SAME),  # MaxSessions: wait on that transport, never "dead"
        (Step.OPEN, False, False, False, Verdict.RETRY_FRESH),  # nothing sent that runs anything
        (Step.OPEN, False, True, False, Verdict.RETRY_FRESH),
        (Step.OPEN, True, False, False, Verdict.REFUSED),  # a subsystem refused, a channel closed: same again
        (Step.EXEC_UNSENT, False, False, False, Verdict.RETRY_FRESH),  # Paramiko dropped it: it never left
        (Step.EXEC_SENT, True, True, True, Verdict.RETRY_FRESH),  # a stale spare the server closed
        (Step.EXEC_SENT, True, True, False, Verdict.REFUSED),  # CHANNEL_FAILURE on a fresh channel
        (Step.EXEC_SENT, False, True, False, Verdict.UNKNOWN),  # the transport died with the exec unanswered
        (Step.EXEC_SENT, False, True, True, Verdict.UNKNOWN),  # ... also on a spare
        (Step.TRANSFER, False, False, False, Verdict.RETRY_FRESH),  # temporary name, renamed when complete
        (Step.TRANSFER, True, True, False, Verdict.REFUSED),
    ],
)
def test_verdicts(step: Step, alive: bool, refused: bool, from_spare: bool, verdict: Verdict) -> None:
    assert judge(step, alive=alive, refused=refused, from_spare=from_spare) is verdict


def test_a_channel_open_nobody_answered_is_tried_on_another_transport() -> None:
    assert judge(Step.OPEN, alive=True, refused=False, answered=False) is Verdict.RETRY_FRESH
    assert judge(Step.OPEN, alive=True, refused=True, answered=False) is Verdict.RETRY_FRESH


def test_a_dead_transport_after_the_exec_went_out_is_never_retried() -> None:
    assert all(
        judge(Step.EXEC_SENT, alive=False, refused=r, from_spare=s) is Verdict.UNKNOWN
        for r in (True, False)
        for s in (True, False)
    )
