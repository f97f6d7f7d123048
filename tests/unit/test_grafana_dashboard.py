"""extensions/grafana/healer.json: importable, and its queries name only metrics the collection emits.

The emitted names come from the real outputs rendered from fixtures: the diagnose role's
healer.prom template (over a fleet built by the role's filters from the module's result on a
fixture host) and the pool's Prometheus text (what the pool_stats callback and
``pooled-ssh stats --prometheus`` write).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set, Tuple

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from ansible_collections.healer.pooled_ssh.plugins.module_utils import _diagnose_report as report
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_runner import diagnose
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _stats

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "extensions" / "grafana" / "healer.json"
PROM_TEMPLATE = REPO / "roles" / "diagnose" / "templates" / "healer.prom.j2"
NOW = "2026-01-01T00:00:00Z"

sys.path.insert(0, str(Path(__file__).resolve().parent / "module_utils"))
from diagnose_fakes import FixtureSystem  # noqa: E402

METRIC = re.compile(r"\b((?:healer|pooled_ssh)_[A-Za-z0-9_]+)\b")
SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? \S+$")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="')
SELECTOR_LABELS = re.compile(r"\b((?:healer|pooled_ssh)_[A-Za-z0-9_]+)\{([^}]*)\}")
BY_LABELS = re.compile(r"\bby \(([^)]*)\)")


def fixture_fleet() -> Dict[str, Any]:
    """Two hosts diagnosed twice (the second run five minutes and some CPU time later), so every
    family of the role's textfile has samples, rates included."""
    first = diagnose({}, FixtureSystem("host"))
    entries = []
    for name in ("web1", "db1"):
        before = report.host_entry([first], None, mode="combined", alert_after=1, fail_on="critical", reported_at=NOW)
        before = copy.deepcopy(before)
        before["counters"]["collected_at"] -= 300
        before["totals"]["cpu_seconds_total"] = {m: v * 0.9 for m, v in before["totals"]["cpu_seconds_total"].items()}
        entries.append(
            report.host_entry([first], before, mode="combined", alert_after=1, fail_on="never", reported_at=NOW)
        )
        assert entries[-1]["rates"]["cpu_busy_ratio"] >= 0, (name, entries[-1]["rate_resets"])
    return report.fleet(["web1", "db1", "gone"], [*entries, {}], {}, NOW)


def render_role_textfile() -> str:
    templar = Templar(loader=DataLoader(), variables={"__diagnose_fleet": fixture_fleet()})
    return templar.template(trust_as_template(PROM_TEMPLATE.read_text(encoding="utf-8")))


def render_pool_textfile() -> str:
    values = {name: 1 for name in (*_stats.CUMULATIVE, *_stats.GAUGES)}
    return _stats.prometheus({"total": values, "hosts": {"web1": values, "db1": values}})


def families(text: str) -> Dict[str, Set[str]]:
    """{family: the label names of its samples} of a Prometheus text exposition."""
    out: Dict[str, Set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            out.setdefault(line.split()[2], set())
        elif line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, line
            out.setdefault(match.group(1), set()).update(LABEL.findall(match.group(2) or ""))
    return out


@pytest.fixture(scope="module")
def emitted() -> Dict[str, Set[str]]:
    role, pool = families(render_role_textfile()), families(render_pool_textfile())
    assert "healer_host_health" in role and "healer_node_load1" in role and "healer_rate_cpu_busy_ratio" in role
    assert "pooled_ssh_pool_misses_total" in pool
    return {**role, **pool}


@pytest.fixture(scope="module")
def dashboard() -> Dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(dashboard: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(where, PromQL) of every panel target and every templating variable."""
    out = [(f"panel {p['title']!r}", t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    out += [(f"variable {v['name']!r}", v["definition"]) for v in dashboard["templating"]["list"]]
    return out


def test_the_dashboard_is_importable_as_is(dashboard):
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(dashboard):
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"]), panel["title"]
    required = {r["id"] for r in dashboard["__requires"] if r["type"] == "panel"}
    assert {p["type"] for p in panels(dashboard) if p["type"] != "row"} <= required


def test_every_metric_the_dashboard_queries_is_emitted(dashboard, emitted):
    used = {name: where for where, expr in queries(dashboard) for name in METRIC.findall(expr)}
    assert used, "the dashboard queries the collection's metrics"
    missing = {name: where for name, where in used.items() if name not in emitted}
    assert missing == {}, f"queried but never emitted: {missing}"
    # both sources are on the dashboard
    assert any(n.startswith("healer_") for n in used) and any(n.startswith("pooled_ssh_") for n in used)


def test_every_label_the_dashboard_selects_or_groups_by_exists(dashboard, emitted):
    for where, expr in queries(dashboard):
        for name, selector in SELECTOR_LABELS.findall(expr):
            for label in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=~?", selector):
                assert label in emitted[name], f"{where}: {name} has no label {label!r}"
        grouped = [label.strip() for labels in BY_LABELS.findall(expr) for label in labels.split(",")]
        for label in grouped:
            names = METRIC.findall(expr)
            assert all(label in emitted[n] for n in names), f"{where}: not every metric of {expr!r} has {label!r}"
    variables = {v["name"]: v["definition"] for v in dashboard["templating"]["list"]}
    for name, definition in variables.items():
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", definition).groups()
        assert label in emitted[metric], (name, definition)


def test_a_dashboard_that_queries_an_unknown_metric_fails_the_check(dashboard, emitted):
    broken = copy.deepcopy(dashboard)
    broken["panels"][1]["targets"][0]["expr"] = "healer_host_healthy"
    used = {name for _where, expr in queries(broken) for name in METRIC.findall(expr)}
    assert "healer_host_healthy" in used - set(emitted)
