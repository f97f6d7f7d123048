"""The collection's metadata files: changelog fragments, runtime, execution environment."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {
    "major_changes",
    "minor_changes",
    "breaking_changes",
    "deprecated_features",
    "removed_features",
    "security_fixes",
    "bugfixes",
    "known_issues",
    "trivial",
    "release_summary",
}


def test_every_changelog_fragment_uses_known_sections() -> None:
    fragments = sorted((ROOT / "changelogs" / "fragments").glob("*.yml"))
    assert fragments
    for fragment in fragments:
        data = yaml.safe_load(fragment.read_text())
        assert isinstance(data, dict) and data, fragment
        assert set(data) <= SECTIONS, (fragment, set(data) - SECTIONS)
        for entries in data.values():
            assert isinstance(entries, list) and all(isinstance(e, str) and e for e in entries), fragment


def test_execution_environment_files() -> None:
    ee = yaml.safe_load((ROOT / "meta" / "execution-environment.yml").read_text())
    assert ee["version"] == 3
    assert (ROOT / ee["dependencies"]["python"]).read_text().count("paramiko>=") == 1
    assert "openssh-client" in (ROOT / ee["dependencies"]["system"]).read_text()


def test_runtime_and_galaxy_metadata() -> None:
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    assert runtime["requires_ansible"].startswith(">=2.17")
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    assert (galaxy["namespace"], galaxy["name"]) == ("healer", "pooled_ssh")
    assert {"tests", ".venv*", "benchmarks"} <= set(galaxy["build_ignore"])
