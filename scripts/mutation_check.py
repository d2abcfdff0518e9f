"""Mutation proof for the adversarial tests: remove one defence at a time, in a copy of the tree,
and show that the tests which claim to prove it fail *because of their hostile assertion*.

For every mutation, in this order:
1. baseline: the selected hostile tests and the honest tests pass on the unmutated copy;
2. the edit applies exactly (each `old` text occurs exactly once), so a mutation can never go
   stale silently;
3. honest run on the mutated tree: honest inputs still load (a mutant that breaks the load is
   *broken*, never a kill);
4. hostile run on the mutated tree: a test is killed only when it fails with an assertion
   (`AssertionError`, or pytest's `Failed:` from `pytest.fail` / `pytest.raises` that did not
   raise); any other exception or a setup error is a broken mutation, a skip is a tier that
   could not run, a pass is a survivor (or, for `layered` tests, a case another layer holds).

Exit status 0 only when every selected mutation ran, stayed honest and had every `hostile`
test killed. Usage:

    .venv/bin/python scripts/mutation_check.py              # every mutation
    .venv/bin/python scripts/mutation_check.py --list
    .venv/bin/python scripts/mutation_check.py landlock safe-load
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"


@dataclass(frozen=True)
class Edit:
    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Selection:
    """One pytest invocation: a path and an optional -k expression."""

    path: str
    k: str = ""

    def argv(self) -> list[str]:
        return [self.path, "-k", self.k] if self.k else [self.path]

    def __str__(self) -> str:
        return f"{self.path}" + (f" -k '{self.k}'" if self.k else "")


@dataclass(frozen=True)
class Mutation:
    name: str
    removes: str
    edits: tuple[Edit, ...]
    hostile: tuple[Selection, ...]  # each must fail by its assertion
    honest: tuple[Selection, ...]  # each must still pass on the mutated tree
    layered: tuple[Selection, ...] = ()  # run; survivors are held by another layer (reported)
    needs_docker: bool = False


_NO_SECCOMP = Edit(
    "loader/_internal/confine.py",
    "    syscall_filter(seccomp.ERRNO(errno.EPERM), syscalls.ALLOWED + syscalls.RUNTIME).load()\n",
    "    return None  # mutation-check: no seccomp filter\n",
)
_NO_LANDLOCK = Edit(
    "loader/_internal/confine.py",
    "        _syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))\n",
    "        pass  # mutation-check: Landlock ruleset built but never enforced\n",
)
_HOSTILE_CATALOGUE = Selection(
    "tests/integration/test_loader.py",
    "signed_hostile and not (memory or cpu or sleep or billion or deep or flood or build-patches)",
)
_HONEST_LOAD = Selection("tests/integration/test_loader.py", "round_trips or concurrent_loads")
_HONEST_CONTAINER = Selection("tests/container/test_loader_container.py", "good_model")

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "seccomp",
        "the confined child's seccomp filter (Landlock and rlimits stay)",
        (_NO_SECCOMP,),
        hostile=(Selection("tests/integration/test_confinement.py", "unlisted_syscalls"),),
        honest=(_HONEST_LOAD,),
        layered=(_HOSTILE_CATALOGUE,),
    ),
    Mutation(
        "landlock",
        "the child's Landlock ruleset (seccomp and rlimits stay): shows what they still hold",
        (_NO_LANDLOCK,),
        hostile=(Selection("tests/integration/test_confinement.py", "cannot_read_files"),),
        honest=(_HONEST_LOAD,),
        layered=(_HOSTILE_CATALOGUE,),
    ),
    Mutation(
        "child-all",
        "the child's seccomp filter and Landlock (only rlimits stay)",
        (_NO_SECCOMP, _NO_LANDLOCK),
        hostile=(
            _HOSTILE_CATALOGUE,
            Selection("tests/integration/test_confinement.py", "cannot_read_files or unlisted_syscalls"),
        ),
        honest=(_HONEST_LOAD,),
    ),
    Mutation(
        "fcntl-commands",
        "the seccomp filter on fcntl's command (F_SETOWN, F_SETSIG, O_ASYNC allowed again)",
        (
            Edit(
                "loader/_internal/confine.py",
                "    for command in _FCNTL_ALLOWED:\n        f.add_rule(seccomp.ALLOW, \"fcntl\", seccomp.Arg(1, seccomp.EQ, command))\n"
                "    f.add_rule(seccomp.ALLOW, \"fcntl\", seccomp.Arg(1, seccomp.EQ, _F_SETFL), seccomp.Arg(2, seccomp.MASKED_EQ, _O_ASYNC, 0))\n",
                "    f.add_rule(seccomp.ALLOW, \"fcntl\")  # mutation-check: any fcntl command\n",
            ),
        ),
        hostile=(Selection("tests/integration/test_confinement.py", "kernel_signal_the_loader"),),
        honest=(_HONEST_LOAD,),
    ),
    Mutation(
        "child-descriptors",
        "the descriptor cleanup of children and workers (they keep what the fork server inherited)",
        (
            Edit("loader/_internal/confine.py", "    hold_only(keep)\n", "    pass  # mutation-check: inherited descriptors kept\n"),
        ),
        hostile=(
            Selection("tests/integration/test_confinement.py", "holds_exactly_its_descriptors or fork_server_or_the_resource_tracker"),
        ),
        honest=(_HONEST_LOAD,),
    ),
    Mutation(
        "child-process-group",
        "the own session and process group of children and workers (they stay in the loader's)",
        (Edit("loader/_internal/confine.py", "    leave_loader_group()\n", "    pass  # mutation-check: loader's process group\n"),),
        hostile=(Selection("tests/integration/test_confinement.py", "holds_exactly_its_descriptors"),),
        honest=(_HONEST_LOAD,),
    ),
    Mutation(
        "identity-regexp-engine",
        "linear-time matching of identity_regexp (Python's backtracking re instead of RE2)",
        (Edit("loader/signers.py", "        return re2.compile(pattern, options)\n", "        return __import__('re').compile(pattern)  # mutation-check: backtracking re\n"),),
        hostile=(
            Selection("tests/unit/test_policy.py::test_an_inconsistent_signer_is_refused_naming_the_field[signer2-signers.0.identity_regexp]"),
            Selection("tests/unit/test_policy.py::test_an_inconsistent_signer_is_refused_naming_the_field[signer3-signers.0.identity_regexp]"),
        ),
        honest=(Selection("tests/unit/test_policy.py", "identity_regexp_is_a_sigstore_policy"),),
    ),
    Mutation(
        "identity-regexp-length",
        "the bound on identity_regexp's length",
        (Edit("loader/signers.py", "    if len(pattern) > MAX_PATTERN:\n", "    if False:  # mutation-check: any length\n"),),
        hostile=(Selection("tests/unit/test_policy.py::test_an_inconsistent_signer_is_refused_naming_the_field[signer4-signers.0.identity_regexp]"),),
        honest=(Selection("tests/unit/test_policy.py", "identity_regexp_is_a_sigstore_policy"),),
    ),
    Mutation(
        "certificate-eku",
        "the certificate signer's codeSigning requirement (a TLS server leaf signs models again)",
        (Edit("loader/_internal/methods/certificate.py", "        _require_code_signing(leaf)\n", "        pass  # mutation-check: any extended key usage\n"),),
        hostile=(Selection("tests/integration/test_signing_methods.py", "code_signing_leaf_only"),),
        honest=(Selection("tests/integration/test_signing_methods.py", "loader_verify_says_ok"),),
    ),
    Mutation(
        "certificate-current",
        "the requirement that the certificate signer's leaf be valid now",
        (Edit("loader/_internal/methods/certificate.py", "        _require_current(leaf)\n", "        pass  # mutation-check: expired leaves accepted\n"),),
        hostile=(Selection("tests/integration/test_signing_methods.py", "past_its_validity"),),
        honest=(Selection("tests/integration/test_signing_methods.py", "loader_verify_says_ok"),),
    ),
    Mutation(
        "oms-statement",
        "the OMS v1.0 checks on the signed statement (subject, predicate, resources)",
        (Edit("loader/_internal/methods/base.py", "        oms.check_statement(payload)\n", "        pass  # mutation-check: statement unchecked\n"),),
        hostile=(Selection("tests/integration/test_oms_conformance.py", "statement_breaking_a_must"),),
        honest=(Selection("tests/integration/test_oms_conformance.py", "crafted_control_verifies or test_the_valid_test_vectors"),),
    ),
    Mutation(
        "oms-bundle",
        "the OMS v1.0 checks on the bundle's shape",
        (Edit("loader/_internal/verify.py", "    oms.check_bundle(bundle_json)\n", "    pass  # mutation-check: bundle shape unchecked\n"),),
        hostile=(Selection("tests/integration/test_oms_conformance.py", "bundle_breaking_a_must"),),
        honest=(Selection("tests/integration/test_oms_conformance.py", "crafted_control_verifies or test_the_valid_test_vectors"),),
    ),
    Mutation(
        "oms-ignore-syntax",
        "the OMS ignore-path syntax check (globs accepted)",
        (Edit("loader/_internal/oms.py", "    if any(char in path for char in _GLOB):\n", "    if False:  # mutation-check: globs accepted\n"),),
        hostile=(
            Selection("tests/integration/test_oms_conformance.py::test_ignore_paths_of_a_request_follow_the_syntax[*.txt]"),
            Selection("tests/integration/test_oms_conformance.py::test_ignore_paths_of_a_request_follow_the_syntax[sub/[ab].txt]"),
        ),
        honest=(Selection("tests/integration/test_oms_conformance.py", "crafted_control_verifies"),),
    ),
    Mutation(
        "oms-empty-model",
        "the refusal of an empty model directory",
        (Edit("loader/_internal/signed_manifest.py", "    if not files:\n", "    if False:  # mutation-check: empty models accepted\n"),),
        hostile=(Selection("tests/integration/test_oms_conformance.py", "empty_model_is_rejected"),),
        honest=(Selection("tests/integration/test_oms_conformance.py", "crafted_control_verifies"),),
    ),
    Mutation(
        "side-channel-request-deadline",
        "the side channel's whole-request deadline (a connection may take for ever to send its line)",
        (Edit("loader/_internal/handoff.py", 'pending[conn] = _Pending(b"", time.monotonic() + self.request_seconds)', 'pending[conn] = _Pending(b"", time.monotonic() + 3600)'),),
        hostile=(Selection("tests/integration/test_handoff.py", "never_comes"),),
        honest=(Selection("tests/integration/test_handoff.py", "receives_a_sealed_memfd"),),
    ),
    Mutation(
        "side-channel-connection-cap",
        "the side channel's cap on connections still sending (idle ones can starve the rest)",
        (
            Edit(
                "loader/_internal/handoff.py",
                'self._end(next(iter(pending)), selector, pending, b"too many connections; send the line at once\\n")',
                "conn.close(); continue  # mutation-check: the newest connection is dropped instead",
            ),
        ),
        hostile=(Selection("tests/integration/test_handoff.py", "slow_clients"),),
        honest=(Selection("tests/integration/test_handoff.py", "receives_a_sealed_memfd"),),
    ),
    Mutation(
        "side-channel-offer-kept",
        "keeping an offer whose waiting client had gone (a stale wait uses it up)",
        (Edit("loader/_internal/handoff.py", "self._offers.setdefault(handle, (sealed, expires))", "pass  # mutation-check: the offer is lost"),),
        hostile=(Selection("tests/integration/test_handoff.py", "gave_up or left_does_not_take"),),
        honest=(Selection("tests/integration/test_handoff.py", "receives_a_sealed_memfd"),),
    ),
    Mutation(
        "client-deadline",
        "the client's one deadline for the whole call (the claim gets time of its own)",
        (
            Edit(
                "loader/client.py",
                "return await receive_fd(path, header.fd_handle, _CLAIM_SECONDS, deadline=deadline)",
                "return await receive_fd(path, header.fd_handle, _CLAIM_SECONDS)  # mutation-check",
            ),
        ),
        hostile=(Selection("tests/integration/test_handoff.py", "own_timeout"),),
        honest=(Selection("tests/integration/test_handoff.py", "receives_a_sealed_memfd"),),
    ),
    Mutation(
        "health-probe",
        "the health check's probe of the side channel",
        (Edit("loader/_internal/server.py", "answered = handoff.probe(timeout=every)", "answered = True  # mutation-check"),),
        hostile=(Selection("tests/integration/test_handoff.py", "health_says_not_serving"),),
        honest=(Selection("tests/integration/test_handoff.py", "receives_a_sealed_memfd"),),
    ),
    Mutation(
        "special-files-nonblocking",
        "opening models-root files without blocking (a FIFO blocks the request thread)",
        (Edit("loader/_internal/paths.py", "os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW", "os.O_RDONLY | os.O_NOFOLLOW"),),
        hostile=(Selection("tests/unit/test_paths.py", "special and fifo"),),
        honest=(Selection("tests/unit/test_paths.py", "regular_file_is_read or size_cap"),),
    ),
    Mutation(
        "special-files-type",
        "the regular-file check on the open descriptor",
        (Edit("loader/_internal/paths.py", "        if not stat.S_ISREG(info.st_mode):\n", "        if False:  # mutation-check: any file type\n"),),
        hostile=(Selection("tests/unit/test_paths.py", "special and character"),),
        honest=(Selection("tests/unit/test_paths.py", "regular_file_is_read or size_cap"),),
    ),
    Mutation(
        "manifest-member-open",
        "opening a signed directory's members through the checked open",
        (
            Edit(
                "loader/_internal/signed_manifest.py",
                'fd, info = open_regular(path, "model directory member")',
                "fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC); info = os.fstat(fd)  # mutation-check",
            ),
        ),
        hostile=(Selection("tests/integration/test_special_files.py", "swapped"),),
        honest=(Selection("tests/integration/test_special_files.py", "already_in_a_signed_directory"),),
    ),
    Mutation(
        "side-channel-tidy",
        "closing waits whose client left before the next offer or wait comes",
        (Edit("loader/_internal/handoff.py", "                self._tidy(now)\n", "                pass  # mutation-check: no tidying\n"),),
        hostile=(Selection("tests/integration/test_handoff.py", "left_is_let_go"),),
        honest=(Selection("tests/integration/test_handoff.py", "receives_a_sealed_memfd"),),
    ),
    Mutation(
        "side-channel-late-wait",
        "answering a wait whose call already failed (it stays open until its time runs out)",
        (Edit("loader/_internal/handoff.py", "            failed = self._withdrawn.pop(handle, None)\n", "            failed = None  # mutation-check\n"),),
        hostile=(Selection("tests/integration/test_handoff.py", "after_its_call_failed"),),
        honest=(Selection("tests/integration/test_handoff.py", "receives_a_sealed_memfd"),),
    ),
    Mutation(
        "validators-stored-state",
        "validators reading stored state only (computed properties run again)",
        (
            Edit("runtime/_internal/validators/common.py", "    return attributes.get(name, default)\n", "    return getattr(obj, name, default)  # mutation-check\n"),
            Edit("runtime/_internal/validators/common.py", "    return type(attributes) is dict and name in attributes\n", "    return hasattr(obj, name)  # mutation-check\n"),
        ),
        hostile=(Selection("tests/unit/test_validators.py", "never_read_a_computed_property"),),
        honest=(Selection("tests/unit/test_safe_load.py", "ordinary_model_round_trips or every_allowlisted_family"),),
    ),
    Mutation(
        "polynomial-degree",
        "PolynomialFeatures' private degree bounds checked against degree",
        (Edit("runtime/_internal/validators/preprocessing.py", '    if state(est, "_min_degree") != low or state(est, "_max_degree") != high:\n', "    if False:  # mutation-check\n"),),
        hostile=(Selection("tests/unit/test_crafted.py::test_each_crafted_category_is_refused_with_its_reason", "polynomial_max_degree"),),
        honest=(Selection("tests/unit/test_safe_load.py", "every_allowlisted_family"),),
    ),
    Mutation(
        "voting-labels",
        "a voting member's encoded classes checked to be 0..k-1",
        (Edit("runtime/_internal/validators/ensembles.py", "    if not np.array_equal(labels, np.arange(k)):\n", "    if False:  # mutation-check\n"),),
        hostile=(Selection("tests/unit/test_crafted.py::test_each_crafted_category_is_refused_with_its_reason", "voting_member_label_of_a_billion"),),
        honest=(Selection("tests/unit/test_safe_load.py", "every_allowlisted_family"),),
    ),
    Mutation(
        "masked-arrays-walked",
        "walking a masked array's data (an estimator hidden in cv_results_)",
        (Edit("runtime/_internal/validators/__init__.py", "            stack.extend(_run(_masked, obj))\n", "            pass  # mutation-check\n"),),
        hostile=(Selection("tests/unit/test_crafted.py::test_each_crafted_category_is_refused_with_its_reason", "masked_array_holding_an_estimator"),),
        honest=(Selection("tests/unit/test_safe_load.py", "every_allowlisted_family"),),
    ),
    Mutation(
        "calls-per-prediction",
        "the bound on estimator calls per prediction through shared members",
        (Edit("runtime/_internal/validators/composite.py", "            if calls > MAX_USES:\n", "            if False:  # mutation-check\n"),),
        hostile=(Selection("tests/unit/test_validators.py", "calls_per_prediction_are_bounded"),),
        honest=(Selection("tests/unit/test_safe_load.py", "every_allowlisted_family"),),
    ),
    Mutation(
        "tree-constructor-bounds",
        "the pre-scan's bounds on a tree's constructor arguments (n_features, n_outputs)",
        (Edit("runtime/_internal/prescan.py", "            if type(value) is not int or not 1 <= value <= high:\n", "            if type(value) is not int:  # mutation-check\n"),),
        hostile=(Selection("tests/unit/test_crafted.py::test_each_crafted_category_is_refused_with_its_reason", "tree_of_four_billion_outputs"),),
        honest=(Selection("tests/unit/test_safe_load.py", "forests_and_boosted_trees"),),
    ),
    Mutation(
        "sandbox-answer-rows",
        "the runtime's check that a sandboxed answer has the request's rows",
        (Edit("runtime/_internal/sandboxed.py", "    if shape[0] != rows:\n", "    if False:  # mutation-check\n"),),
        hostile=(Selection("tests/unit/test_sandboxed_arrays.py", "crafted_answers_are_refused and rows"),),
        honest=(Selection("tests/unit/test_sandboxed_arrays.py", "plain_answers_are_parsed_as_sent"),),
    ),
    Mutation(
        "sandbox-answer-size",
        "the caps on a sandboxed answer's size: the loader's (Predict), the runtime's on the worker's direct channel and in its parser",
        (
            Edit("loader/_internal/inference.py", "            if body_len > max_body:\n", "            if False:  # mutation-check\n"),
            Edit("loader/client.py", "        if body_len > self._expected[0][1]:\n", "        if False:  # mutation-check\n"),
            Edit("runtime/_internal/sandboxed.py", "    if count * size > max_bytes:\n", "    if False:  # mutation-check\n"),
        ),
        hostile=(Selection("tests/integration/test_sandboxed.py::test_a_model_acting_at_predict_time_is_contained[huge-output]"),),
        honest=(Selection("tests/integration/test_sandboxed.py::test_served_in_the_sandbox_predicts_like_plain_joblib[digits-svc-sandbox]"),),
    ),
    Mutation(
        "frame-header-depth",
        "refusing a frame header nested past json's depth (RecursionError) as malformed, on every side that reads a confined process's header",
        (Edit("loader/contract.py", "    except (ValueError, RecursionError):\n", "    except ValueError:  # mutation-check\n"),),
        hostile=(
            Selection("tests/integration/test_sandboxed.py::test_a_model_acting_at_predict_time_is_contained[forged-nested-header]"),
            Selection("tests/integration/test_sandboxed.py::test_predict_refuses_a_forged_answer_the_runtime_never_sees[nested-header]"),
        ),
        honest=(Selection("tests/integration/test_sandboxed.py::test_served_in_the_sandbox_predicts_like_plain_joblib[digits-svc-sandbox]"),),
    ),
    Mutation(
        "sandbox-answer-dtype",
        "the runtime's check of a sandboxed answer's dtype (its one parser, for the direct channel and Predict)",
        (
            Edit(
                "runtime/_internal/sandboxed.py",
                "    if not isinstance(dtype, str) or (size := array_itemsize(dtype)) is None:\n",
                "    if not isinstance(dtype, str) or (size := array_itemsize(dtype) or 8) is None:  # mutation-check\n",
            ),
        ),
        # An object dtype gets no further anyway (NumPy refuses to map bytes as objects): the
        # case that parses is another dtype off the list, of the same item size.
        hostile=(Selection("tests/unit/test_sandboxed_arrays.py", "crafted_answers_are_refused and f8"),),
        honest=(Selection("tests/unit/test_sandboxed_arrays.py", "plain_answers_are_parsed_as_sent"),),
    ),
    Mutation(
        "sandbox-answer-dtype-loader",
        "the loader's check of a sandboxed answer's dtype and shape (Predict)",
        (Edit("loader/_internal/inference.py", "    if not isinstance(dtype, str) or array_itemsize(dtype) is None or shape is None:\n", "    if False:  # mutation-check\n"),),
        hostile=(Selection("tests/integration/test_sandboxed.py::test_predict_refuses_a_forged_answer_the_runtime_never_sees[object-dtype]"),),
        honest=(Selection("tests/integration/test_sandboxed.py::test_served_in_the_sandbox_predicts_like_plain_joblib[digits-svc-sandbox]"),),
    ),
    Mutation(
        "worker-seccomp",
        "the sandboxed worker's seccomp filter",
        (Edit("loader/_internal/worker.py", "        install_syscall_filter()\n", "        pass  # mutation-check\n"),),
        hostile=(Selection("tests/integration/test_sandboxed.py::test_a_model_acting_at_predict_time_is_contained[fork]"),),
        honest=(Selection("tests/integration/test_sandboxed.py::test_served_in_the_sandbox_predicts_like_plain_joblib[digits-svc-sandbox]"),),
    ),
    Mutation(
        "worker-landlock",
        "the sandboxed worker's Landlock ruleset",
        (Edit("loader/_internal/worker.py", "        restrict_filesystem([*readable_paths(), *extra] if extra else None, needed=extra)\n", "        pass  # mutation-check\n"),),
        hostile=(Selection("tests/integration/test_sandboxed.py::test_a_model_acting_at_predict_time_is_contained[file-read]"),),
        honest=(Selection("tests/integration/test_sandboxed.py::test_served_in_the_sandbox_predicts_like_plain_joblib[digits-svc-sandbox]"),),
    ),
    Mutation(
        "view-chroot",
        "the chroot of the children's view where Landlock is missing (gVisor)",
        (Edit("loader/_internal/view.py", '    _check(_libc.chroot(root.encode()), f"chroot({root})")\n', "    pass  # mutation-check\n"),),
        hostile=(Selection("tests/unit/test_view.py::test_a_process_in_the_view_reads_only_the_tree_and_cannot_leave_it"),),
        honest=(Selection("tests/unit/test_unpickling_errors.py"),),
    ),
    Mutation(
        "view-capabilities",
        "the view's drop of the capabilities its user namespace gave (CAP_SYS_CHROOT climbs out)",
        (Edit("loader/_internal/view.py", '    _check(_libc.capset(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), none), "capset")\n', "    pass  # mutation-check\n"),),
        hostile=(Selection("tests/unit/test_view.py::test_a_process_in_the_view_reads_only_the_tree_and_cannot_leave_it"),),
        honest=(Selection("tests/unit/test_view.py::test_a_folder_outside_the_view_is_refused_before_anything_is_entered"),),
    ),
    Mutation(
        "worker-memory",
        "the sandboxed worker's memory limit",
        (Edit("loader/_internal/inference.py", "            memory_bytes=self.limits.memory_bytes,\n", "            memory_bytes=1 << 40,  # mutation-check\n"),),
        hostile=(Selection("tests/integration/test_sandboxed.py::test_a_model_acting_at_predict_time_is_contained[allocate-past-limit]"),),
        honest=(Selection("tests/integration/test_sandboxed.py::test_served_in_the_sandbox_predicts_like_plain_joblib[digits-svc-sandbox]"),),
    ),
    Mutation(
        "worker-descriptors",
        "the sandboxed worker's isolation (descriptors, process group) before confinement",
        (Edit("loader/_internal/worker.py", "        isolate((0, 1, 2, fd))\n", "        pass  # mutation-check\n"),),
        hostile=(Selection("tests/integration/test_confinement.py", "holds_exactly_its_descriptors"),),
        honest=(Selection("tests/integration/test_sandboxed.py::test_served_in_the_sandbox_predicts_like_plain_joblib[digits-svc-sandbox]"),),
    ),
    Mutation(
        "profile",
        "the loader container's seccomp profile (runtime/seccomp-loader.json allows everything)",
        (Edit("runtime/seccomp-loader.json", "", '{"defaultAction": "SCMP_ACT_ALLOW"}\n'),),
        hostile=(Selection("tests/container/test_loader_container.py", "kernel_surface"),),
        honest=(_HONEST_CONTAINER,),
        needs_docker=True,
    ),
    Mutation(
        "safe-load",
        "the serving side's archive pre-scan, allowlist and validators (skops loads what it is given)",
        (
            Edit(
                "runtime/safe_load.py",
                "    trusted = frozenset(trusted_types)\n",
                "    return _naive_load(data)  # mutation-check: no pre-scan, allowlist or validation\n"
                "    trusted = frozenset(trusted_types)\n",
            ),
            Edit(
                "runtime/safe_load.py",
                "def load_model(",
                "def _naive_load(data: Source) -> BaseEstimator:\n"
                "    import io, pickle, zipfile\n\n"
                "    import skops.io\n\n"
                "    raw = data.read() if hasattr(data, 'read') else bytes(data)\n"
                "    if not zipfile.is_zipfile(io.BytesIO(raw)):\n"
                "        return pickle.loads(raw)  # what a server without the defence does with a pickle\n"
                "    return skops.io.loads(raw, trusted=skops.io.get_untrusted_types(data=raw))\n\n\n"
                "def load_model(",
            ),
        ),
        hostile=(
            Selection("tests/container/test_adversarial.py", "forged"),
            Selection("tests/unit/test_safe_load.py", "zip_bomb or crafted or non_estimator"),
        ),
        honest=(
            Selection("tests/unit/test_safe_load.py", "ordinary_model_round_trips or walkthrough_and_benchmark"),
            _HONEST_CONTAINER,
        ),
        needs_docker=True,
    ),
    Mutation(
        "side-channel-digest",
        "the client's check that a passed model holds the bytes the loader's header names",
        (
            Edit(
                "loader/client.py",
                "    if actual != expected[1]:\n",
                "    if False:  # mutation-check: no digest check\n",
            ),
        ),
        hostile=(
            Selection("tests/integration/test_handoff.py::test_the_client_refuses_an_unsealed_or_altered_memfd[True]"),
            Selection("tests/integration/test_handoff.py::test_a_model_read_before_its_digest_is_kept_only_if_the_digest_matches[other]"),
        ),
        honest=(Selection("tests/integration/test_handoff.py", "receives_a_sealed_memfd"),),
    ),
    Mutation(
        "identity",
        "the keyless signer's identity check (the issuer is still checked)",
        (
            Edit(
                "loader/_internal/policy.py",
                "        if not any(self._pattern.fullmatch(san) for san in sans):\n",
                "        if False:  # mutation-check: any identity\n",
            ),
            Edit(
                "loader/_internal/policy.py",
                "        Identity(identity=signer.identity, issuer=signer.issuer)\n        if signer.identity\n",
                "        IdentityPattern('.*', signer.issuer)  # mutation-check: any identity\n        if signer.identity\n",
            ),
        ),
        hostile=(Selection("tests/integration/test_loader.py", "wrong_identity"),),
        honest=(_HONEST_LOAD,),
    ),
)


@dataclass
class Run:
    """What one pytest run said about each test: passed, killed, broken, skipped."""

    verdicts: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    collected: bool = True


def _verdict(case: ET.Element) -> tuple[str, str]:
    for tag in ("failure", "error"):
        node = case.find(tag)
        if node is not None:
            message = (node.get("message") or "").strip()
            if tag == "failure" and (message.startswith("AssertionError") or message.startswith("Failed:") or message.startswith("assert ")):
                return "killed", message.splitlines()[0][:160] if message else ""
            return "broken", f"{tag}: {message.splitlines()[0][:160] if message else '(no message)'}"
    if case.find("skipped") is not None:
        return "skipped", (case.find("skipped").get("message") or "")[:160]  # type: ignore[union-attr]
    return "passed", ""


def run_pytest(tree: Path, selection: Selection, report: Path) -> Run:
    argv = [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection.argv(), f"--junitxml={report}"]
    proc = subprocess.run(argv, cwd=tree, env=_env(tree), capture_output=True, text=True, timeout=3600)
    (report.with_suffix(".log")).write_text(proc.stdout + proc.stderr)
    run = Run()
    if not report.exists():
        run.collected = False
        return run
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        run.verdicts[name], run.reasons[name] = _verdict(case)
    if not run.verdicts or proc.returncode in (2, 3, 4, 5):  # interrupted, internal, usage, nothing collected
        run.collected = False
    return run


def _env(tree: Path) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    return env


def copy_tree(dest: Path) -> None:
    """The committed tree plus uncommitted edits, without the venv or build output."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        source = ROOT / raw.decode()
        if not source.is_file():
            continue
        target = dest / raw.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    shared = ROOT.parent / "shared"  # tests read the conformance corpus from ../shared
    if shared.exists() and not (dest.parent / "shared").exists():
        (dest.parent / "shared").symlink_to(shared)


def apply(edits: Iterable[Edit], tree: Path) -> str | None:
    """Apply the edits; return why a mutation no longer applies, or None."""
    for edit in edits:
        path = tree / edit.path
        text = path.read_text()
        if edit.old == "":
            path.write_text(edit.new)
            continue
        count = text.count(edit.old)
        if count != 1:
            return f"{edit.path}: the text to replace occurs {count} times (the code moved: update the mutation)"
        path.write_text(text.replace(edit.old, edit.new))
    return None


def docker_available() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def check(mutation: Mutation, work: Path) -> tuple[bool, list[str]]:
    lines: list[str] = [f"== {mutation.name}: removes {mutation.removes}"]
    if mutation.needs_docker and not docker_available():
        return False, [*lines, "   NOT RUN: needs Docker and the images (scripts/setup.sh)"]
    base_tree, mutant_tree = work / f"{mutation.name}-base" / "repo", work / f"{mutation.name}-mutant" / "repo"
    for tree in (base_tree, mutant_tree):
        copy_tree(tree)
    ok = True
    # 1. Baseline on the unmutated tree: everything selected passes.
    for i, selection in enumerate(mutation.hostile + mutation.honest + mutation.layered):
        run = run_pytest(base_tree, selection, work / f"{mutation.name}-base-{i}.xml")
        bad = {n: v for n, v in run.verdicts.items() if v != "passed"}
        if not run.collected or bad:
            lines.append(f"   BASELINE FAILS on the unmutated tree: {selection}: {bad or 'nothing collected'}")
            return False, lines
        lines.append(f"   baseline {selection}: {len(run.verdicts)} passed")
    # 2. The edit applies exactly.
    stale = apply(mutation.edits, mutant_tree)
    if stale:
        return False, [*lines, f"   BROKEN MUTATION: {stale}"]
    # 3. Honest inputs still load on the mutated tree.
    for i, selection in enumerate(mutation.honest):
        run = run_pytest(mutant_tree, selection, work / f"{mutation.name}-honest-{i}.xml")
        bad = {n: f"{v} {run.reasons[n]}" for n, v in run.verdicts.items() if v != "passed"}
        if not run.collected or bad:
            lines.append(f"   BROKEN MUTATION: honest {selection} does not pass on the mutated tree: {bad or 'nothing collected'}")
            return False, lines
        lines.append(f"   honest on the mutant {selection}: {len(run.verdicts)} passed")
    # 4. Hostile tests fail by their assertion; layered ones are reported.
    for group, selections in (("hostile", mutation.hostile), ("layered", mutation.layered)):
        for i, selection in enumerate(selections):
            run = run_pytest(mutant_tree, selection, work / f"{mutation.name}-{group}-{i}.xml")
            if not run.collected:
                ok = False
                lines.append(f"   NOT RUN: {selection} collected nothing on the mutated tree")
                continue
            for name, verdict in sorted(run.verdicts.items()):
                if verdict == "killed":
                    label = "KILLED"
                elif verdict == "passed":
                    label = "held by another layer" if group == "layered" else "SURVIVED"
                    ok = ok and group == "layered"
                elif verdict == "skipped":
                    label, ok = "NOT RUN (skipped)", False
                else:
                    label = "broken (crashed, not a kill)"
                    ok = ok and group == "layered"
                detail = f"  [{run.reasons[name]}]" if run.reasons.get(name) and verdict != "killed" else ""
                lines.append(f"   {group:8} {label:24} {name}{detail}")
    return ok, lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, junit reports)")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:22} {m.removes}")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutations {unknown}; known: {sorted(known)}")
    selected = [known[n] for n in args.names] if args.names else list(MUTATIONS)
    work = Path(tempfile.mkdtemp(prefix="mutation-check."))
    results: dict[str, bool] = {}
    try:
        for mutation in selected:
            ok, lines = check(mutation, work)
            results[mutation.name] = ok
            print("\n".join(lines), flush=True)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    for name, ok in results.items():
        print(f"{name:22} {'every hostile test killed, honest loads intact' if ok else 'FAILED (see above)'}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
