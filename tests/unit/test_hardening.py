"""One definition of the loader container's hardening for compose and the docker mode (issue 16, bug 3)."""

from __future__ import annotations

import json

import yaml

from runtime.docker_sandbox import HARDENING, SECCOMP_PROFILE, hardened_loader_options
from tests.support import ROOT

HARDENING_KEYS = {"network_mode", "read_only", "cap_drop", "security_opt", "mem_limit", "pids_limit", "cpus", "tmpfs", "logging"}


def test_compose_loader_extends_the_shared_hardening_and_repeats_none_of_it() -> None:
    loader = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["loader"]
    assert loader["extends"] == {"file": "runtime/loader-hardening.json", "service": "loader"}
    assert (ROOT / loader["extends"]["file"]).resolve() == HARDENING.resolve()
    assert not HARDENING_KEYS & set(loader), "compose.yaml sets hardening beside the shared definition"


def test_docker_mode_options_are_the_shared_definition() -> None:
    spec = json.loads(HARDENING.read_text())["services"]["loader"]
    options = hardened_loader_options()
    assert options["pids_limit"] == spec["pids_limit"] == 128
    assert options["log_config"] == {"type": "local", "config": {"max-size": "5m", "max-file": "2"}}
    assert options["mem_limit"] == 2 << 30 and options["nano_cpus"] == 1_500_000_000
    assert options["network_mode"] == "none" and options["read_only"] is True and options["cap_drop"] == ["ALL"]
    assert options["tmpfs"] == {"/tmp": "size=64m,mode=1777"}
    assert "no-new-privileges:true" in options["security_opt"]
    assert f"seccomp={SECCOMP_PROFILE.read_text()}" in options["security_opt"]
    assert (ROOT / "runtime" / "seccomp-loader.json").resolve() == SECCOMP_PROFILE.resolve()
