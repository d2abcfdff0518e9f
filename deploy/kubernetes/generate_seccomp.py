"""Generate the Security Profiles Operator copy of the loader's seccomp profile.

runtime/seccomp-loader.json (Docker/OCI JSON, used by compose and the runtime's docker mode) is
the one definition. A node installation uses that file as is; this script turns it into the
`SeccompProfile` object in components/security-profiles-operator/, and fails, naming the field,
when the profile uses something the operator's object cannot express.

    python deploy/kubernetes/generate_seccomp.py           # rewrite the object
    python deploy/kubernetes/generate_seccomp.py --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "runtime" / "seccomp-loader.json"
TARGET = Path(__file__).resolve().parent / "components" / "security-profiles-operator" / "seccompprofile.yaml"
NAME = "mlserver-sigstore-loader"
# Fields of a Docker profile that carry no filtering meaning.
COMMENTS = {"comment"}
RULE_FIELDS = {"names", "action", "errnoRet", "args"}
ARG_FIELDS = {"index", "value", "valueTwo", "op"}
EPERM = 1


class UnsupportedProfile(ValueError):
    """The Docker profile uses a feature the SeccompProfile object cannot express."""


def _rule(rule: dict[str, Any], where: str) -> dict[str, Any]:
    for key in ("includes", "excludes"):
        if rule.get(key):
            raise UnsupportedProfile(f"{where}.{key}: conditional rules cannot be expressed; list the syscalls plainly")
    unknown = set(rule) - RULE_FIELDS - COMMENTS - {"includes", "excludes"}
    if unknown:
        raise UnsupportedProfile(f"{where}: unknown fields {sorted(unknown)}")
    out: dict[str, Any] = {"names": sorted(rule["names"]), "action": rule["action"]}
    if "errnoRet" in rule:
        out["errnoRet"] = rule["errnoRet"]
    if rule.get("args"):
        args = []
        for i, arg in enumerate(rule["args"]):
            extra = set(arg) - ARG_FIELDS
            if extra:
                raise UnsupportedProfile(f"{where}.args[{i}]: unknown fields {sorted(extra)}")
            args.append({k: arg[k] for k in ("index", "value", "valueTwo", "op") if k in arg and (k != "valueTwo" or arg[k])})
        out["args"] = args
    return out


def convert(profile: dict[str, Any]) -> dict[str, Any]:
    """The SeccompProfile object (security-profiles-operator.x-k8s.io/v1) for a Docker profile."""
    unknown = set(profile) - {"defaultAction", "defaultErrnoRet", "architectures", "syscalls", "flags"} - COMMENTS
    if unknown:
        raise UnsupportedProfile(f"top level: unsupported fields {sorted(unknown)}")
    if profile.get("defaultErrnoRet", EPERM) != EPERM:
        # The object has no defaultErrnoRet; runtimes then answer EPERM.
        raise UnsupportedProfile(f"defaultErrnoRet {profile['defaultErrnoRet']}: only EPERM (1) can be expressed")
    spec: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if profile.get("architectures"):
        spec["architectures"] = list(profile["architectures"])
    if profile.get("flags"):
        spec["flags"] = list(profile["flags"])
    spec["syscalls"] = [_rule(rule, f"syscalls[{i}]") for i, rule in enumerate(profile.get("syscalls", []))]
    return {
        "apiVersion": "security-profiles-operator.x-k8s.io/v1",
        "kind": "SeccompProfile",
        "metadata": {"name": NAME},
        "spec": spec,
    }


def render(profile: dict[str, Any]) -> str:
    header = (
        "# GENERATED from runtime/seccomp-loader.json by deploy/kubernetes/generate_seccomp.py: do not edit.\n"
        "# Installed on every node by the Security Profiles Operator as operator/" + NAME + ".json.\n"
    )
    # JSON is valid YAML; one rule per line keeps diffs readable.
    return header + json.dumps(convert(profile), indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the generated object is out of date")
    args = parser.parse_args(argv)
    try:
        text = render(json.loads(SOURCE.read_text()))
    except UnsupportedProfile as err:
        print(f"FAIL: {SOURCE.relative_to(ROOT)}: {err}", file=sys.stderr)
        return 2
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"FAIL: {TARGET.relative_to(ROOT)} is out of date; run python {Path(__file__).relative_to(ROOT)}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
