# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation of healer_diagnose's parameters into a list of check jobs.

Ansible checks the top-level types; the per-check ``thresholds`` and ``options`` and the
applications are free-form, so they are validated here and every error names the parameter
path (``thresholds.memory.warning: invalid range '10::'``).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_checks import CHECK_FUNCTIONS
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_thresholds import (
    ABOVE,
    BELOW,
    Threshold,
    ThresholdError,
    parse_threshold,
)

HOST_CHECKS = (
    "filesystem",
    "memory",
    "oom_kills",
    "cpu",
    "load",
    "processes",
    "file_descriptors",
    "services",
    "time_sync",
    "uptime",
)
DEFAULT_CHECKS = HOST_CHECKS
ALL_CHECKS = tuple(CHECK_FUNCTIONS)
APPLICATION_CHECKS = ("processes", "services", "ports", "http", "log_errors")
FAIL_ON = ("critical", "warning", "never")

# check -> threshold key -> (default, direction). Bare keys hold the main measurement.
THRESHOLDS: Dict[str, Dict[str, Tuple[Any, str]]] = {
    "filesystem": {
        "warning": (90, ABOVE),
        "critical": (95, ABOVE),
        "inodes_warning": (90, ABOVE),
        "inodes_critical": (95, ABOVE),
    },
    "memory": {
        "warning": (90, ABOVE),
        "critical": (95, ABOVE),
        "swap_warning": (80, ABOVE),
        "swap_critical": (90, ABOVE),
    },
    "oom_kills": {"warning": (0, ABOVE), "critical": (None, ABOVE)},
    "cpu": {
        "warning": (90, ABOVE),
        "critical": (95, ABOVE),
        "iowait_warning": (20, ABOVE),
        "iowait_critical": (None, ABOVE),
        "steal_warning": (10, ABOVE),
        "steal_critical": (None, ABOVE),
    },
    "load": {"warning": (2, ABOVE), "critical": (4, ABOVE)},
    "processes": {
        "warning": (5, ABOVE),
        "critical": (10, ABOVE),
        "pids_warning": (90, ABOVE),
        "pids_critical": (95, ABOVE),
    },
    "file_descriptors": {"warning": (70, ABOVE), "critical": (90, ABOVE)},
    "services": {"warning": (0, ABOVE), "critical": (None, ABOVE)},
    "ports": {"warning": (1, ABOVE), "critical": (5, ABOVE)},
    "http": {
        "warning": (2, ABOVE),
        "critical": (5, ABOVE),
        "cert_warning": (14, BELOW),
        "cert_critical": (7, BELOW),
    },
    "dns": {"warning": (1, ABOVE), "critical": (5, ABOVE)},
    "time_sync": {"warning": (0.05, ABOVE), "critical": (None, ABOVE)},
    "uptime": {"warning": (600, BELOW), "critical": (None, BELOW)},
    "log_errors": {"warning": (10, ABOVE), "critical": (100, ABOVE)},
}

# check -> option -> (kind, default). ``timeout`` is accepted by every check.
OPTIONS: Dict[str, Dict[str, Tuple[str, Any]]] = {
    "filesystem": {
        "mountpoints": ("list_str", []),
        "exclude_mountpoints": ("list_str", []),
        "exclude_fstypes": ("list_str", []),
    },
    "memory": {},
    "oom_kills": {},
    "cpu": {"interval": ("interval", 0.5)},
    "load": {},
    "processes": {"names": ("list_str", [])},
    "file_descriptors": {},
    "services": {"units": ("list_str", [])},
    "ports": {"ports": ("ports", None)},
    "http": {
        "url": ("url", None),
        "method": ("str", "GET"),
        "headers": ("dict_str", {}),
        "expect_status": ("list_int", []),
        "body_match": ("regex", None),
        "validate_certs": ("bool", True),
        "max_body_bytes": ("positive_int", 1048576),
    },
    "dns": {"names": ("list_str", None)},
    "time_sync": {"grace_seconds": ("number", 1020)},
    "uptime": {},
    "log_errors": {
        "since": ("str", "1 hour ago"),
        "unit": ("str", None),
        "priority": ("priority", "err"),
        "path": ("str", None),
        "pattern": ("regex", None),
        "max_bytes": ("positive_int", 1048576),
    },
}
REQUIRED = {"ports": "ports", "http": "url", "dns": "names"}
# A list given where the options dict is expected is this option (``processes: [nginx]``).
SHORTHAND = {"processes": "names", "services": "units", "ports": "ports", "dns": "names"}
_PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_APP_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class ParamError(ValueError):
    """A parameter that cannot be used; the message starts with the parameter's path."""


class Job:
    """One check to run: which function, on which options, with which thresholds and timeout."""

    def __init__(
        self,
        name: str,
        check: str,
        application: Optional[str],
        options: Dict[str, Any],
        thresholds: Dict[str, Optional[Threshold]],
        timeout: float,
    ) -> None:
        self.name = name
        self.check = check
        self.application = application
        self.options = options
        self.thresholds = thresholds
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Job({self.name!r})"


class Plan:
    """Validated parameters: the jobs and the module-wide settings."""

    def __init__(self, jobs: List[Job], fail_on: str, metrics: bool, previous: Dict[str, Any], timeout: float) -> None:
        self.jobs = jobs
        self.fail_on = fail_on
        self.metrics = metrics
        self.previous = previous
        self.timeout = timeout


def _number(value: Any, name: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ParamError(f"{name}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ParamError(f"{name}: expected a number, got {value!r}") from None
    if positive and number <= 0:
        raise ParamError(f"{name}: must be greater than 0, got {value!r}")
    return number


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ParamError(f"{name}: expected an integer, got {value!r}")
    try:
        return int(str(value).strip(), 10) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ParamError(f"{name}: expected an integer, got {value!r}") from None


def _str_list(value: Any, name: str) -> List[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ParamError(f"{name}: expected a list of strings, got {value!r}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ParamError(f"{name}[{index}]: expected a non-empty string, got {item!r}")
    return list(value)


def _port(value: Any, name: str) -> Dict[str, Any]:
    """A port target: ``80`` (listening here) or ``{host: db, port: 5432}`` (accepts connections)."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"port", "host"})
        if unknown:
            raise ParamError(f"{name}: unknown key {unknown[0]!r} (expected port and optional host)")
        if "port" not in value:
            raise ParamError(f"{name}: port is required")
        target: Dict[str, Any] = {"port": _port_number(value["port"], name + ".port")}
        if value.get("host") is not None:
            if not isinstance(value["host"], str) or not value["host"]:
                raise ParamError(f"{name}.host: expected a host name or address")
            target["host"] = value["host"]
        return target
    return {"port": _port_number(value, name)}


def _port_number(value: Any, name: str) -> int:
    port = _int(value, name)
    if not 1 <= port <= 65535:
        raise ParamError(f"{name}: port must be 1..65535, got {port}")
    return port


def _option(kind: str, value: Any, name: str) -> Any:
    """Check and convert one option value of the given kind."""
    if kind == "list_str":
        return _str_list(value, name)
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise ParamError(f"{name}: expected a non-empty string, got {value!r}")
        return value
    if kind == "url":
        if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value):
            raise ParamError(f"{name}: expected an http:// or https:// URL, got {value!r}")
        return value
    if kind == "regex":
        if not isinstance(value, str):
            raise ParamError(f"{name}: expected a regular expression, got {value!r}")
        try:
            re.compile(value)
        except re.error as error:
            raise ParamError(f"{name}: invalid regular expression {value!r}: {error}") from None
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("yes", "true", "on", "1", "no", "false", "off", "0"):
            return value.lower() in ("yes", "true", "on", "1")
        raise ParamError(f"{name}: expected a boolean, got {value!r}")
    if kind == "number":
        return _number(value, name)
    if kind == "interval":
        number = _number(value, name)
        if number < 0.1:
            raise ParamError(f"{name}: must be at least 0.1 s, got {value!r}")
        return number
    if kind == "positive_int":
        number = _int(value, name)
        if number < 1:
            raise ParamError(f"{name}: must be at least 1, got {number}")
        return number
    if kind == "list_int":
        if not isinstance(value, list):
            value = [value]
        return [_int(item, f"{name}[{index}]") for index, item in enumerate(value)]
    if kind == "dict_str":
        if not isinstance(value, dict):
            raise ParamError(f"{name}: expected a dictionary, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if kind == "ports":
        if not isinstance(value, list) or not value:
            raise ParamError(f"{name}: expected a non-empty list of ports")
        return [_port(item, f"{name}[{index}]") for index, item in enumerate(value)]
    if kind == "priority":
        text = str(value)
        if text not in _PRIORITIES and text not in [str(n) for n in range(8)]:
            raise ParamError("{}: expected one of {}, got {!r}".format(name, ", ".join(_PRIORITIES), value))
        return text
    raise AssertionError("unknown option kind " + kind)  # pragma: no cover


def check_options(check: str, raw: Any, name: str) -> Dict[str, Any]:
    """Validated options of one check (defaults filled in); ``name`` is the parameter path."""
    if raw is None:
        raw = {}
    shorthand = isinstance(raw, list) and check in SHORTHAND
    if shorthand:
        raw = {SHORTHAND[check]: raw}
    if not isinstance(raw, dict):
        raise ParamError(f"{name}: expected a dictionary, got {raw!r}")
    schema = OPTIONS[check]
    result: Dict[str, Any] = {}
    for key in sorted(raw):
        if key == "timeout":
            if raw[key] is not None:
                result["timeout"] = _number(raw[key], name + ".timeout")
            continue
        if key not in schema:
            allowed = ", ".join(sorted([*list(schema), "timeout"]))
            raise ParamError(f"{name}.{key}: unknown option (expected one of: {allowed})")
        if raw[key] is not None:
            result[key] = _option(schema[key][0], raw[key], name if shorthand else f"{name}.{key}")
    for key, (_kind, default) in schema.items():
        if key not in result and default is not None:
            result[key] = default
    required = REQUIRED.get(check)
    if required and not result.get(required):
        raise ParamError(f"{name}.{required}: required by the {check} check")
    return result


def check_thresholds(check: str, layers: List[Tuple[Any, str]]) -> Dict[str, Optional[Threshold]]:
    """Thresholds of one check: defaults overridden by each ``(dict, parameter path)`` layer in turn."""
    spec = THRESHOLDS[check]
    result = {key: parse_threshold(default, key, direction) for key, (default, direction) in spec.items()}
    for raw, name in layers:
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise ParamError(f"{name}: expected a dictionary, got {raw!r}")
        for key, value in raw.items():
            if key not in spec:
                raise ParamError(
                    "{}.{}: unknown threshold (expected one of: {})".format(name, key, ", ".join(sorted(spec)))
                )
            try:
                result[key] = parse_threshold(value, f"{name}.{key}", spec[key][1])
            except ThresholdError as error:
                raise ParamError(str(error)) from None
    return result


def _lenient_options(check: str, raw: Any, name: str) -> None:
    """Validate options of a check that does not run, without requiring its targets."""
    try:
        check_options(check, raw, name)
    except ParamError as error:
        if not str(error).endswith(f"required by the {check} check"):
            raise


def _dict_param(params: Dict[str, Any], key: str, allowed: Any) -> Dict[str, Any]:
    value = params.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParamError(f"{key}: expected a dictionary, got {value!r}")
    for check in value:
        if check not in allowed:
            raise ParamError("{}.{}: unknown check (expected one of: {})".format(key, check, ", ".join(allowed)))
    return value


def _previous(value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParamError(f"previous: expected a dictionary, got {value!r}")
    result = dict(value)
    for key in ("oom_kill", "boot_time"):
        if result.get(key) is not None:
            number = _number(result[key], "previous." + key, positive=False)
            result[key] = int(number) if number.is_integer() else number
    return result


def build_plan(params: Dict[str, Any]) -> Plan:
    """Turn the module parameters into jobs; raises :class:`ParamError` naming the bad parameter."""
    checks = params.get("checks")
    checks = list(DEFAULT_CHECKS) if checks is None else _str_list(checks, "checks")
    for index, check in enumerate(checks):
        if check not in CHECK_FUNCTIONS:
            raise ParamError(
                "checks[{}]: unknown check {!r} (expected one of: {})".format(index, check, ", ".join(ALL_CHECKS))
            )
    thresholds = _dict_param(params, "thresholds", ALL_CHECKS)
    options = _dict_param(params, "options", ALL_CHECKS)
    default_timeout = (
        _number(params["check_timeout"], "check_timeout") if params.get("check_timeout") is not None else 10.0
    )
    fail_on = params.get("fail_on") or "critical"
    if fail_on not in FAIL_ON:
        raise ParamError("fail_on: expected one of {}, got {!r}".format(", ".join(FAIL_ON), fail_on))

    # Options and thresholds of checks that do not run are validated too: a typo is an error.
    for check in ALL_CHECKS:
        if check not in checks and options.get(check) is not None:
            _lenient_options(check, options[check], "options." + check)
        if check not in checks:
            check_thresholds(check, [(thresholds.get(check), "thresholds." + check)])

    jobs: List[Job] = []
    for check in dict.fromkeys(checks):
        opts = check_options(check, options.get(check), "options." + check)
        opts["scope"] = "host"
        limits = check_thresholds(check, [(thresholds.get(check), "thresholds." + check)])
        jobs.append(Job(check, check, None, opts, limits, opts.pop("timeout", default_timeout)))

    applications = params.get("applications") or []
    if not isinstance(applications, list):
        raise ParamError(f"applications: expected a list, got {applications!r}")
    seen = set()
    for index, app in enumerate(applications):
        where = f"applications[{index}]"
        if not isinstance(app, dict):
            raise ParamError(f"{where}: expected a dictionary, got {app!r}")
        unknown = sorted(set(app) - set(APPLICATION_CHECKS) - {"name", "thresholds", "timeout"})
        if unknown:
            raise ParamError(f"{where}.{unknown[0]}: unknown key")
        app_name = app.get("name")
        if not isinstance(app_name, str) or not _APP_NAME_RE.match(app_name):
            raise ParamError(f"{where}.name: expected a name of letters, digits, '_', '.' or '-', got {app_name!r}")
        if app_name in seen:
            raise ParamError(f"{where}.name: duplicate application {app_name!r}")
        seen.add(app_name)
        app_thresholds = app.get("thresholds") or {}
        if not isinstance(app_thresholds, dict):
            raise ParamError(f"{where}.thresholds: expected a dictionary")
        for check in app_thresholds:
            if check not in APPLICATION_CHECKS:
                raise ParamError(f"{where}.thresholds.{check}: not an application check")
        app_timeout = _number(app["timeout"], where + ".timeout") if app.get("timeout") is not None else default_timeout
        for check in APPLICATION_CHECKS:
            raw = app.get(check)
            if raw is None or raw == [] or raw == {}:
                continue
            opts = check_options(check, raw, f"{where}.{check}")
            opts["scope"] = "application"
            limits = check_thresholds(
                check,
                [
                    (thresholds.get(check), "thresholds." + check),
                    (app_thresholds.get(check), f"{where}.thresholds.{check}"),
                ],
            )
            jobs.append(Job(app_name + "/" + check, check, app_name, opts, limits, opts.pop("timeout", app_timeout)))
        for check, raw in app_thresholds.items():  # thresholds of a check this application does not run
            check_thresholds(check, [(raw, f"{where}.thresholds.{check}")])
    metrics = params.get("metrics")
    return Plan(
        jobs, fail_on, True if metrics is None else bool(metrics), _previous(params.get("previous")), default_timeout
    )
