"""The diagnose role's history (history.jsonl), its charts and the pool's figures for a run."""

from __future__ import annotations

import json

from ansible_collections.healer.pooled_ssh.plugins.module_utils import _diagnose_history as history

GIB = 1024**3


def host(busy=0.25, load=0.5, avail=2 * GIB, rx=None, **extra):
    metrics = {
        "node_load1": [{"labels": {}, "value": load}],
        "node_memory_MemAvailable_bytes": [{"labels": {}, "value": avail}],
        "node_filesystem_size_bytes": [
            {"labels": {"mountpoint": "/"}, "value": 100.0},
            {"labels": {"mountpoint": "/var"}, "value": 200.0},
        ],
        "node_filesystem_avail_bytes": [
            {"labels": {"mountpoint": "/"}, "value": 60.0},
            {"labels": {"mountpoint": "/var"}, "value": 20.0},
        ],
    }
    rates = {} if busy is None else {"cpu_busy_ratio": busy}
    if rx is not None:
        rates["network_receive_bytes_per_second"] = rx
    return {"health": "ok", "metrics": metrics, "rates": rates, **extra}


def test_key_figures_of_an_entry():
    figures = history.key_figures(host(rx={"lo": 10.0, "eth0": 5.5}))
    assert figures == {
        "cpu_busy_ratio": 0.25,
        "load1": 0.5,
        "memory_available_bytes": 2 * GIB,
        "filesystem_used_ratio": 0.9,  # /var, the fullest
        "network_receive_bytes_per_second": 15.5,
        "network_transmit_bytes_per_second": None,
    }
    assert history.key_figures({})["load1"] is None


def test_a_stale_host_is_recorded_without_figures():
    run = history.record({"a": host(), "b": {"health": "unknown", "stale": True}}, "T", None)
    assert run["hosts"]["b"] == {"health": "unknown", "stale": True, "figures": {}}
    assert run["hosts"]["a"]["figures"]["load1"] == 0.5 and run["pool"] is None


def test_history_is_bounded_and_survives_a_torn_line():
    runs = [history.record({"a": host(load=n)}, f"T{n}", None) for n in range(5)]
    text = history.dump(runs) + '{"hosts": {"a"'  # a write cut short
    parsed = history.parse(text + "\nnot json\n[1]\n")
    assert parsed == json.loads(json.dumps(runs))
    kept = history.append(parsed, history.record({"a": host(load=9)}, "T9", None), 3)
    assert [r["generated_at"] for r in kept] == ["T3", "T4", "T9"]
    assert len(history.append([], kept[0], 0)) == 1, "at least the run itself"
    assert history.parse(None) == []


def test_pool_figures_are_the_runs_share():
    before = {"running": True, "stats": {"total": {"poolMisses": 5, "poolHits": 10, "waits": 1, "waitSeconds": 0.5}}}
    after = {"running": True, "stats": {"total": {"poolMisses": 5, "poolHits": 40, "waits": 3, "waitSeconds": 0.75}}}
    assert history.pool_figures(before, after) == {"logins": 0, "reuses": 30, "waits": 2, "wait_seconds": 0.25}
    started = history.pool_figures({"running": False}, after)
    assert started == {"logins": 5, "reuses": 40, "waits": 3, "wait_seconds": 0.75}
    assert history.pool_figures(before, {"running": False}) is None
    assert history.pool_figures(None, None) is None


def test_a_chart_has_one_point_per_run_that_measured_it():
    runs = [history.record({"a": host(busy=b)}, f"T{i}", None) for i, b in enumerate([0.1, None, 0.5, 0.3])]
    charts = {c["key"]: c for c in history.charts(runs, "a")}
    assert [c["key"] for c in history.charts(runs, "a")] == [k for k, _t, _u in history.CHARTS]
    busy = charts["cpu_busy_ratio"]
    assert len(busy["points"]) == 3 and busy["last"] == "30.0%"
    xs = [p["x"] for p in busy["points"]]
    assert xs == sorted(xs) and xs[0] == history.PAD_X and xs[-1] == history.WIDTH - history.PAD_X
    # ratios are drawn on 0..100%: 0.5 is half-way up
    middle = busy["points"][1]
    bottom, top = history.HEIGHT - history.PAD_Y, history.PAD_TOP
    assert middle["y"] == round((bottom + top) / 2, 1) and middle["label"] == "T2: 50.0%"
    assert max(p["y"] for p in busy["points"]) <= bottom and min(p["y"] for p in busy["points"]) >= top
    assert busy["polyline"].count(",") == 3
    assert len(charts["load1"]["points"]) == 4
    assert history.chart(runs, "nobody", "load1", "Load", "number")["points"] == []


def test_human_figures():
    assert history.human(None, "bytes") == "n/a"
    assert history.human(512, "bytes") == "512 B"
    assert history.human(3 * GIB, "bytes") == "3.0 GiB"
    assert history.human(2048, "bytes/s") == "2.0 KiB/s"
    assert history.human(0.123, "ratio") == "12.3%"
    assert history.human(1.5, "number") == "1.50"
