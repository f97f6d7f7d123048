"""The healer_diagnose module entry point: argument_spec, check mode, fail_on, bad parameters."""

from __future__ import annotations

import json
from contextlib import contextmanager
from unittest import mock

import pytest
import yaml
from ansible.module_utils import basic
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_config import (
    ALL_CHECKS,
    DEFAULT_CHECKS,
    OPTIONS,
    THRESHOLDS,
)
from ansible_collections.healer.pooled_ssh.plugins.modules import healer_diagnose

try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core < 2.19

    @contextmanager
    def patch_module_args(args=None):
        payload = json.dumps({"ANSIBLE_MODULE_ARGS": args or {}}).encode()
        with mock.patch.object(basic, "_ANSIBLE_ARGS", payload):
            yield


def run_module(capsys, **args):
    with patch_module_args(args), pytest.raises(SystemExit) as info:
        healer_diagnose.main()
    result = json.loads(capsys.readouterr().out)
    return info.value.code, result


def test_runs_on_this_machine_in_check_mode(capsys):
    # fail_on never: this machine's real load or uptime may legitimately be critical.
    code, result = run_module(capsys, checks=["memory", "load", "uptime"], fail_on="never", _ansible_check_mode=True)
    assert code == 0
    assert result["changed"] is False and "failed" not in result
    assert set(result["checks"]) == {"memory", "load", "uptime"}
    assert result["health"] in ("ok", "unknown", "warning", "critical")
    assert result["metrics"]["node_load1"][0]["labels"] == {}


def test_fails_when_health_reaches_fail_on_and_keeps_the_data(capsys):
    code, result = run_module(capsys, checks=["memory"], thresholds={"memory": {"critical": "@0:100"}}, metrics=False)
    assert code == 1
    assert result["failed"] is True and result["changed"] is False
    assert result["health"] == "critical"
    assert result["checks"]["memory"]["state"] == "critical"
    assert result["msg"].startswith("Diagnosis failed: health critical")


def test_bad_parameter_names_it(capsys):
    code, result = run_module(capsys, thresholds={"memory": {"warning": "10::"}})
    assert code == 1
    assert result["msg"] == "thresholds.memory.warning: invalid range '10::'"


def test_argument_spec_rejects_unknown_check(capsys):
    code, result = run_module(capsys, checks=["disk"])
    assert code == 1 and "checks" in result["msg"] and "disk" in result["msg"]


def test_documentation_matches_the_argument_spec():
    doc = yaml.safe_load(healer_diagnose.DOCUMENTATION)
    yaml.safe_load(healer_diagnose.EXAMPLES)
    returns = yaml.safe_load(healer_diagnose.RETURN)
    spec = healer_diagnose.ARGUMENT_SPEC
    assert set(doc["options"]) == set(spec)
    for name, option in doc["options"].items():
        assert option["type"] == spec[name]["type"], name
        assert option.get("default") == spec[name].get("default"), name
        assert option.get("choices") == spec[name].get("choices"), name
    assert doc["options"]["checks"]["default"] == list(DEFAULT_CHECKS)
    assert doc["options"]["checks"]["choices"] == list(ALL_CHECKS)
    assert set(doc["options"]["applications"]["suboptions"]) == set(spec["applications"]["options"])
    assert {"health", "checks", "metrics", "counters", "summary", "msg", "counts", "metrics_skipped"} <= set(returns)
    # every check's thresholds and options are documented
    thresholds_doc = " ".join(doc["options"]["thresholds"]["description"])
    options_doc = " ".join(doc["options"]["options"]["description"])
    for check in ALL_CHECKS:
        assert f"C({check})" in thresholds_doc, check
        for key in THRESHOLDS[check]:
            assert key in thresholds_doc, (check, key)
        for key in OPTIONS[check]:
            assert f"C({key})" in options_doc, (check, key)
