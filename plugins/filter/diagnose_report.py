# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the diagnose role: its report logic, kept in Python so that it is unit-tested.

The logic lives in ``module_utils/_diagnose_report.py`` (plain data, no Ansible); these are
thin adapters that take the role's variables and add the time of the report.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ansible.errors import AnsibleFilterError
from ansible_collections.healer.pooled_ssh.plugins.module_utils import _diagnose_history as history
from ansible_collections.healer.pooled_ssh.plugins.module_utils import _diagnose_report as report


def _now() -> str:
    return time.strftime(report.ISO_FORMAT, time.gmtime())


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AnsibleFilterError(f"{what} must be a mapping, not {type(value).__name__}")
    return value


def diagnose_host_entry(
    runs: Sequence[Mapping[str, Any]],
    previous: Optional[Mapping[str, Any]] = None,
    mode: str = "combined",
    alert_after: Any = 1,
    fail_on: str = "critical",
) -> Dict[str, Any]:
    """A host's entry of health.json from its registered module run(s) and its previous entry."""
    if isinstance(runs, Mapping):
        runs = [runs]
    if fail_on not in ("critical", "warning", "never"):
        raise AnsibleFilterError(f"diagnose_fail_on must be critical, warning or never, not {fail_on!r}")
    try:
        return report.host_entry(
            list(runs),
            _mapping(previous, "the previous entry"),
            mode=mode,
            alert_after=alert_after,
            fail_on=fail_on,
            reported_at=_now(),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise AnsibleFilterError(f"diagnose report: unexpected module result ({type(e).__name__}: {e})") from None


def diagnose_fleet(
    entries: Sequence[Any], hosts: Sequence[str], previous_report: Optional[Mapping[str, Any]] = None
) -> Dict[str, Any]:
    """Every host of the run with its entry (``entries`` in the order of ``hosts``; a falsy
    entry means the host was not diagnosed and is reported unknown and stale)."""
    if len(entries) != len(hosts):
        raise AnsibleFilterError(f"diagnose_fleet: {len(entries)} entries for {len(hosts)} hosts")
    return report.fleet(hosts, entries, _mapping(previous_report, "the previous report"), _now())


def diagnose_previous_report(document: Any, report_format: str = report.REPORT_FORMAT) -> Dict[str, Any]:
    """The previous health.json when this role wrote it, else {}."""
    return report.previous_report(document, report_format)


def diagnose_layout(fleet: Mapping[str, Any]) -> Dict[str, List[str]]:
    """``{hosts: worst first, columns: the checks}`` of a hosts x checks table."""
    return report.layout(_mapping(fleet, "the fleet"))


def diagnose_history(
    text: Optional[str],
    fleet: Mapping[str, Any],
    pool_before: Optional[Mapping[str, Any]] = None,
    pool_after: Optional[Mapping[str, Any]] = None,
    keep: Any = 50,
) -> List[Dict[str, Any]]:
    """The history (``history.jsonl``'s text) with this run added, bounded to the newest ``keep`` runs.

    ``pool_before``/``pool_after`` are ``pool_info`` results read around the diagnosis."""
    try:
        keep = int(keep)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"diagnose_history_max must be a number, not {keep!r}") from None
    run = history.record(_mapping(fleet, "the fleet"), _now(), history.pool_figures(pool_before, pool_after))
    return history.append(history.parse(text), run, keep)


def diagnose_history_text(runs: Sequence[Mapping[str, Any]]) -> str:
    """``history.jsonl``: one JSON line per run."""
    return history.dump(runs)


def diagnose_charts(runs: Sequence[Mapping[str, Any]], host: str) -> List[Dict[str, Any]]:
    """One host's charted metrics over the history, as SVG coordinates."""
    return history.charts(list(runs), host)


def diagnose_pool_figures(run: Optional[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """``[{label, value}]`` of the pool's figures of a history run ("n/a" without a daemon)."""
    pool = (run or {}).get("pool")
    return [
        {"label": label, "value": "n/a" if not pool else pool.get(key, "n/a")}
        for key, label, _counter in history.POOL_FIGURES
    ]


class FilterModule:
    """The diagnose role's report filters."""

    def filters(self) -> Dict[str, Any]:
        return {
            "diagnose_host_entry": diagnose_host_entry,
            "diagnose_fleet": diagnose_fleet,
            "diagnose_previous_report": diagnose_previous_report,
            "diagnose_layout": diagnose_layout,
            "diagnose_history": diagnose_history,
            "diagnose_history_text": diagnose_history_text,
            "diagnose_charts": diagnose_charts,
            "diagnose_pool_figures": diagnose_pool_figures,
        }
