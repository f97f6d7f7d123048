# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""When the daemon may try an operation again: the one retry policy, with its reasons.

A command that runs twice is worse than a command that fails: the daemon tries again only
when the first attempt provably did not run anything on the host. What counts as proof:

===================  ==========================================  =========================================
step                 failure                                      verdict (why)
===================  ==========================================  =========================================
channel open         the server refused it (MaxSessions),          RETRY_SAME: wait for a slot on that
                     the transport is alive                        transport; the pool learns the limit
channel open         no answer, or the transport died              RETRY_FRESH: nothing was sent that runs
                                                                   anything; another transport
channel open         another error on a live transport (a          REFUSED: the same server says the same
                     subsystem refused, the channel closed)        again
exec (not yet sent)  the transport was already dead                RETRY_FRESH: Paramiko drops packets of
                                                                   a dead transport, the request never left
exec (sent)          the server refused it (CHANNEL_FAILURE) on     RETRY_FRESH for a spare the server closed
                     a live transport, or closed the channel        (stale), else REFUSED: sshd answers an
                     before answering                               exec before it starts anything
exec (sent)          the transport died before the answer          UNKNOWN: sshd may have started it; never
                                                                   re-run, say so
put / fetch          the transport died mid-transfer               RETRY_FRESH once: data goes to a
                                                                   temporary name renamed when complete,
                                                                   a fetch only reads
put / fetch          a file error, or a live transport refused     REFUSED: the same request fails the same
                                                                   way again
===================  ==========================================  =========================================
"""

from __future__ import annotations

from enum import Enum
from typing import Dict


class Step(Enum):
    """How far an operation got before it failed."""

    OPEN = "channel open"
    EXEC_UNSENT = "exec not sent"
    EXEC_SENT = "exec sent"
    TRANSFER = "transfer"


class Verdict(Enum):
    RETRY_SAME = "wait for a slot on the same transport"
    RETRY_FRESH = "try again (another channel or transport)"
    REFUSED = "report the refusal"
    UNKNOWN = "report outcome unknown, never re-run"


#: Attempts in all per step (the first included).
ATTEMPTS: Dict[Step, int] = {Step.OPEN: 6, Step.EXEC_UNSENT: 3, Step.EXEC_SENT: 3, Step.TRANSFER: 2}


def judge(
    step: Step, *, alive: bool, refused: bool = False, from_spare: bool = False, answered: bool = True
) -> Verdict:
    """The verdict for a failure at ``step`` (see the table above).

    ``alive``: the transport still works; ``refused``: the server said no (a refused channel
    open, CHANNEL_FAILURE or a channel closed before its answer); ``from_spare``: the channel
    was a spare opened ahead of time (which the server may have closed as idle); ``answered``:
    the server answered at all (a channel open with no answer leaves the transport unusable).
    """
    if step is Step.OPEN:
        if not alive or not answered:
            return Verdict.RETRY_FRESH
        return Verdict.RETRY_SAME if refused else Verdict.REFUSED
    if step is Step.EXEC_UNSENT:
        return Verdict.RETRY_FRESH
    if step is Step.EXEC_SENT:
        if not alive:
            return Verdict.UNKNOWN
        return Verdict.RETRY_FRESH if from_spare else Verdict.REFUSED
    return Verdict.REFUSED if alive else Verdict.RETRY_FRESH
