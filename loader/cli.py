"""`python -m loader {serve,verify,load,unload,health}`; flag names follow the `sigstore` CLI."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from loader.proto.v1 import loader_pb2
from loader.signers import FIELDS, Signer

if TYPE_CHECKING:
    from loader._internal.inference import Workers

SHIPPED_PRODUCTION_ROOT = Path("/opt/trust/production/trusted_root.json")
# What the fork server (and so every confined child, via /proc/self/environ) may see.
_ENV_KEPT = {
    "PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
}


def _trust_files(specs: list[str]) -> dict[str, Path]:
    from loader._internal.verify import PRODUCTION, production_root_file

    shipped = SHIPPED_PRODUCTION_ROOT if SHIPPED_PRODUCTION_ROOT.exists() else production_root_file()
    files = {PRODUCTION: shipped}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "custom", spec
        files[name] = Path(path)
    return files


def _serve(args: argparse.Namespace) -> int:
    from loader._internal import view
    from loader._internal.confine import LANDLOCK_SETTING, children_in_view, forced_landlock_abi, unconfined_reads
    from loader._internal.keys import KeyConfigError, SigningKeys
    from loader._internal.paths import ModelsRoot
    from loader._internal.process import scrub_initial_environment, set_non_dumpable
    from loader._internal.sandbox import Sandbox, SandboxLimits
    from loader._internal.server import build_server
    from loader._internal.service import LoaderService, ServiceLimits
    from loader._internal.verify import PRODUCTION, TrustConfigError, TrustRoots

    set_non_dumpable()
    try:
        forced_landlock_abi()
    except ValueError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 2
    unconfined = unconfined_reads()  # probes before any thread starts
    if unconfined and not args.allow_unconfined_reads:
        print(
            f"FAIL: no filesystem layer would hold the confined processes' reads ({unconfined}): a signed "
            "model could read every model and trust config the loader can. Run on a kernel with Landlock, "
            "or under gVisor with runtime/seccomp-loader-gvisor.json and the project's image; or accept it "
            "with --allow-unconfined-reads",
            file=sys.stderr,
        )
        return 2
    if unconfined:
        print(f"loader: {unconfined} (accepted with --allow-unconfined-reads)", file=sys.stderr, flush=True)
    if children_in_view():
        # (the production root shipped in the image is public, and part of the image's software)
        shipped = _trust_files([])[PRODUCTION]
        try:
            view.require_outside(
                {"--models-root": str(args.models_root), "--socket folder": str(args.socket.parent)}
                | {f"--trust-config {name}": str(path) for name, path in _trust_files(args.trust_config).items() if path != shipped}
                | {f"--public-key {n}": str(p) for n, p in _named_files(args.public_key).items()}
                | {f"--certificate-authority {n}": str(p) for n, p in _named_files(args.certificate_authority).items()}
            )
        except ValueError as exc:
            print(f"FAIL: {exc}", file=sys.stderr)
            return 2
    # The fork server, so every child, reads the Landlock setting (tests and diagnosis only).
    for name in set(os.environ) - _ENV_KEPT - {LANDLOCK_SETTING}:
        del os.environ[name]
    # What was removed must not stay readable in /proc/1/environ either (gVisor shows it).
    if not scrub_initial_environment():
        print("loader: could not blank the initial environment block (/proc/self/environ)", file=sys.stderr, flush=True)
    # `python -m` puts the launch directory first on sys.path, and the fork server (so every
    # child) inherits sys.path: code lying there must never become importable by a payload.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    files = _trust_files(args.trust_config)
    default = args.default_trust or (list(files)[1] if len(files) == 2 else PRODUCTION)
    try:
        keys = SigningKeys(_named_files(args.public_key), _named_files(args.certificate_authority))
        roots = TrustRoots(files, default, keys)
    except (TrustConfigError, KeyConfigError, ValueError) as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 2
    sandbox = Sandbox(
        SandboxLimits(
            memory_bytes=args.child_memory_mb << 20,
            cpu_seconds=args.child_cpu_seconds,
            wall_seconds=args.child_wall_seconds,
            max_result_bytes=args.max_result_mb << 20,
        ),
        pool_size=args.child_pool,
    )
    try:
        workers = _workers(args)
    except ValueError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 2
    sandbox.warm_up()  # fork server, its imports and the child pool before any gRPC thread
    if workers is not None:
        workers.warm_up()
    service = LoaderService(
        ModelsRoot(args.models_root),
        roots,
        sandbox,
        ServiceLimits(max_concurrent_loads=args.max_concurrent_loads, cache_bytes=args.cache_mb << 20),
        workers,
    )
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="127.0.0.1")
    from loader._internal.confine import confinement_summary

    # The layers the children get, and what is missing (no Landlock, gVisor or not).
    for line in confinement_summary(service.sandbox.limits):
        print(line, file=sys.stderr, flush=True)
    server = build_server(service, args.socket)
    server.start()
    print(
        f"loader serving on unix://{args.socket}; models root {service.root.path}; "
        f"trust roots {roots.names} (default {roots.default!r})",
        file=sys.stderr,
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5).wait()
    if workers is not None:
        workers.close()
    return 0


def _workers(args: argparse.Namespace) -> Workers | None:
    """The sandboxed workers' settings; `--user-code` must be a folder outside the models root."""
    from loader._internal.inference import WorkerLimits, Workers

    user_code = ""
    if args.user_code:
        folder = args.user_code.resolve()
        models = args.models_root.resolve()
        if not folder.is_dir():
            raise ValueError(f"--user-code {args.user_code}: not a folder")
        if folder == models or models in folder.parents or folder in models.parents:
            raise ValueError(
                f"--user-code {folder} overlaps the models root {models}: user code is never read from "
                "where models come from; install it in a folder of its own"
            )
        from loader._internal import view
        from loader._internal.confine import children_in_view

        if children_in_view():
            try:
                view.require_inside((str(folder),))
            except ValueError as exc:
                raise ValueError(f"--user-code {exc}") from None
        user_code = str(folder)
    if args.max_served_models <= 0:
        return None
    return Workers(
        WorkerLimits(
            memory_bytes=args.worker_memory_mb << 20,
            cpu_seconds=args.worker_cpu_seconds,
            deadline_seconds=args.predict_deadline_seconds,
            max_input_bytes=args.max_predict_mb << 20,
            max_output_bytes=args.max_predict_mb << 20,
            max_workers=args.max_served_models,
        ),
        user_code=user_code,
    )


def _named_files(specs: list[str]) -> dict[str, Path]:
    """`NAME=FILE` options (repeatable) as a mapping; a name may be given once."""
    named: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{spec!r}: expected NAME=FILE")
        if name in named:
            raise ValueError(f"{name!r} is given twice")
        named[name] = Path(path)
    return named


_CLAIM_FLAGS = ("repository", "ref", "sha", "name", "trigger")


def _policy_args(parser: argparse.ArgumentParser, keys_by_name: bool) -> None:
    """Every signer field of the policy, with the `sigstore verify identity` flag names; each
    flag's destination is its loader.signers.Signer field."""
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--cert-identity", dest="identity", default="", help="expected certificate identity (SAN), exact")
    who.add_argument(
        "--cert-identity-regexp", dest="identity_regexp", default="", help="expected certificate identity, full regexp match"
    )
    parser.add_argument("--cert-oidc-issuer", dest="issuer", default="", help="expected OIDC issuer, exact")
    for claim in _CLAIM_FLAGS:
        parser.add_argument(f"--workflow-{claim}", default="", help=f"GitHub Actions claim workflow_{claim}, exact")
    if keys_by_name:
        parser.add_argument("--key", default="", metavar="NAME", help="a public key configured on the loader")
        parser.add_argument(
            "--certificate-authority", "--certificate-chain", dest="certificate_authority", default="",
            metavar="NAME", help="a CA configured on the loader (model-signing `sign certificate`)",
        )
    else:
        parser.add_argument("--key", dest="key_file", type=Path, help="PEM public key (model-signing `sign key`)")
        parser.add_argument(
            "--certificate-chain", type=Path, help="PEM CA bundle the signing certificate must chain to"
        )
    parser.add_argument(
        "--ignore-path", action="append", default=[], metavar="P",
        help="a path of the model directory (relative to it) the signature excludes; repeatable",
    )


def _signer(args: argparse.Namespace, **named: str) -> Signer:
    """The policy flags as a signer (`named`: fields given otherwise, such as a key file's name)."""
    fields = {name: getattr(args, name, "") or "" for name in FIELDS}
    return Signer(**{**fields, **named})


def _verify(args: argparse.Namespace) -> int:
    from loader._internal.keys import KeyConfigError, SigningKeys
    from loader._internal.methods import METHODS
    from loader._internal.paths import read_once
    from loader._internal.verify import TrustConfigError, TrustRoots, verify_artefact, verify_directory
    from loader.bundles import describe_candidates, find_bundle, model_file_in
    from loader.errors import LoaderError

    files = _trust_files([args.trust_config] if args.trust_config else [])
    key_name = args.key_file.name if args.key_file else ""
    ca_name = args.certificate_chain.name if args.certificate_chain else ""
    try:
        keys = SigningKeys({key_name: args.key_file} if args.key_file else {}, {ca_name: args.certificate_chain} if ca_name else {})
        roots = TrustRoots(files, "custom" if args.trust_config else "production", keys)
        signer = _signer(args, key=key_name, certificate_authority=ca_name)
        signer.check("policy")
    except (TrustConfigError, KeyConfigError, LoaderError) as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 2
    target: Path = args.file
    bundle = args.bundle or find_bundle(target)
    if bundle is None:
        print(f"FAIL: {target}: found no bundle ({describe_candidates(target)}); give one with --bundle", file=sys.stderr)
        return 1
    # Verification only: a signed directory verifies whatever its files are (OMS v1.0); a model
    # file, when there is one, is checked as `load` will read it.
    model = model_file_in(target) if target.is_dir() else target
    try:
        bundle_json = read_once(bundle, "bundle", 1 << 20)
        if model is None:
            verified = verify_directory(
                bundle_json, [signer], roots, target, ignore_paths=args.ignore_path, max_bytes=1 << 40, signature=bundle
            )
        else:
            verified = verify_artefact(
                read_once(model, "artefact", 1 << 40),
                bundle_json,
                [signer],
                roots,
                directory=model.parent,
                model_file=model.name,
                ignore_paths=args.ignore_path,
                max_bytes=1 << 40,
                signature=bundle,
            )
    except LoaderError as exc:
        print(f"FAIL: {target}: {exc}", file=sys.stderr)
        return 1
    covered = f"; {len(verified.verified_files)} files verified" if len(verified.verified_files) > 1 else ""
    logged = any(method.logged for method in METHODS if method.name == verified.signing_method)
    where = f", log index {verified.log_index}" if logged else ""
    digest = f" sha256:{verified.artefact_sha256}" if verified.artefact_sha256 else ""
    print(
        f"OK: {target}{digest} signed by {verified.identity}"
        + (f" ({verified.issuer})" if verified.issuer else "")
        + f"{where}{covered}"
    )
    return 0


def _load(args: argparse.Namespace) -> int:
    import asyncio

    from loader.client import LoaderCallError, verify_and_load

    request = loader_pb2.VerifyAndLoadRequest(
        artefact=args.file,
        bundle=args.bundle or "",
        signers=[loader_pb2.Signer(**_signer(args).fields())],
        trust_root=args.trust_root or "",
        model_name=args.file,
        trusted_types=args.trusted_type,
        ignore_paths=args.ignore_path,
    )
    if args.execution == "sandbox":
        return _serve_in_sandbox(args, request)
    try:
        fetched = asyncio.run(verify_and_load(args.endpoint, request, args.timeout, args.max_bytes))
    except LoaderCallError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    header = fetched.header
    if args.out is None:
        print("FAIL: --out is required to save the model", file=sys.stderr)
        return 2
    args.out.write_bytes(fetched.data)
    facts = header.facts
    print(
        f"OK: {args.file} sha256:{facts.artefact_sha256} signed by {facts.identity} ({facts.issuer}), "
        f"log index {facts.log_index}; wrote {header.size} bytes of skops to {args.out}"
        + (f"; untrusted types: {list(header.untrusted_types)}" if header.untrusted_types else "")
    )
    return 0


def _serve_in_sandbox(args: argparse.Namespace, request: loader_pb2.VerifyAndLoadRequest) -> int:
    import asyncio

    from loader.client import LoaderCallError, serve

    try:
        served = asyncio.run(serve(args.endpoint, loader_pb2.ServeRequest(load=request, reason="loader load --execution sandbox"), args.timeout))
    except LoaderCallError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    facts = served.facts
    print(
        f"OK: {args.file} sha256:{facts.artefact_sha256} signed by {facts.identity} ({facts.issuer}); served in the "
        f"sandbox with methods {list(served.methods)}; handle {served.handle} (end it with `unload`)"
    )
    return 0


def _unload(args: argparse.Namespace) -> int:
    import asyncio

    from loader.client import LoaderCallError, unload

    try:
        ended = asyncio.run(unload(args.endpoint, args.handle, args.timeout))
    except LoaderCallError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    print("OK: ended" if ended else "OK: no model was served under that handle")
    return 0


def _trust_show(args: argparse.Namespace) -> int:
    import datetime as dt

    from loader._internal.trust import TrustConfigError, as_json, describe, render

    try:
        reports = [describe(name, path) for name, path in _trust_files(args.trust_config).items()]
    except TrustConfigError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 2
    now = dt.datetime.now(dt.timezone.utc)
    print((as_json if args.json else render)(reports, now, args.warn_days))
    return 0


def _health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from loader.proto.v1 import loader_pb2_grpc

    try:
        with grpc.insecure_channel(args.endpoint) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=args.timeout
            ).status
            about = (
                loader_pb2_grpc.LoaderStub(channel).Describe(loader_pb2.DescribeRequest(), timeout=args.timeout)
                if args.details
                else None
            )
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
    if about is not None:
        for line in about.confinement:
            print(f"  {line}")
        print(f"  trust roots: {list(about.trust_roots)} (default {about.default_trust_root!r})")
        print(f"  child pool: {about.child_pool}; models handed over on {about.fd_socket or '(streamed only)'}")
        if about.max_served_models:
            code = f"; user code from {about.user_code} (read-only)" if about.user_code else ""
            print(f"  served in the sandbox: {about.served_models} of at most {about.max_served_models} models{code}")
        else:
            print("  served in the sandbox: off (--max-served-models=0)")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loader", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the verify-and-load gRPC service on a Unix socket")
    p.add_argument("--socket", type=Path, required=True)
    p.add_argument(
        "--allow-unconfined-reads", action="store_true",
        help="start even where neither Landlock nor the chroot view holds the children's reads "
        "(they could then read every file the loader's user can)",
    )
    p.add_argument(
        "--models-root", type=Path, required=True,
        help="the only folder artefacts and bundles are read from (mount it read-only)",
    )
    p.add_argument(
        "--trust-config", action="append", default=[], metavar="[NAME=]FILE",
        help="a trusted root or ClientTrustConfig file; repeatable. 'production' is always present",
    )
    p.add_argument("--default-trust", help="trust root used when a request names none")
    p.add_argument(
        "--public-key", action="append", default=[], metavar="NAME=FILE",
        help="an EC P-256/P-384/P-521 PEM public key that policies may name (`key`); repeatable",
    )
    p.add_argument(
        "--certificate-authority", action="append", default=[], metavar="NAME=FILE",
        help="a PEM CA bundle that policies may name (`certificate_authority`); repeatable",
    )
    p.add_argument("--max-concurrent-loads", type=int, default=2)
    p.add_argument("--child-memory-mb", type=int, default=1024)
    p.add_argument("--child-cpu-seconds", type=int, default=30)
    p.add_argument("--child-wall-seconds", type=float, default=60.0)
    p.add_argument("--max-result-mb", type=int, default=1024)
    p.add_argument(
        "--child-pool", type=int, default=2,
        help="confined children kept forked and waiting (each serves one artefact; 0: fork per load)",
    )
    p.add_argument("--cache-mb", type=int, default=1024)
    p.add_argument(
        "--max-served-models", type=int, default=16,
        help="models served in the sandbox at once, one confined worker each (0: hand models back only)",
    )
    p.add_argument("--worker-memory-mb", type=int, default=2048, help="address space of each worker over its image")
    p.add_argument(
        "--worker-cpu-seconds", type=int, default=86400,
        help="CPU time a worker may use over its whole life (RLIMIT_CPU); a request is held to the deadline",
    )
    p.add_argument("--predict-deadline-seconds", type=float, default=30.0, help="per request; the worker is ended past it")
    p.add_argument("--max-predict-mb", type=int, default=64, help="largest request and answer of a served model")
    p.add_argument(
        "--user-code", type=Path,
        help="a read-only folder of Python packages (the user's estimator classes and functions) that the "
        "workers may import; never inside the models root",
    )
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics on 127.0.0.1 (0: off)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("verify", help="verify a file or model directory offline (no unpickling)")
    p.add_argument("--bundle", type=Path, help="default: <file>.sigstore.json, <file>.sigstore, model.sig")
    _policy_args(p, keys_by_name=False)
    p.add_argument("--trust-config", help="trusted root or ClientTrustConfig (default: production)")
    p.add_argument("--offline", action="store_true", help="accepted for sigstore CLI parity; always offline")
    p.add_argument("file", type=Path, help="a model file or a model directory")
    p.set_defaults(func=_verify)

    p = sub.add_parser("load", help="call VerifyAndLoad on a running loader and save the skops model")
    p.add_argument("--endpoint", required=True, help="e.g. unix:///run/loader/loader.sock")
    p.add_argument("--bundle")
    _policy_args(p, keys_by_name=True)
    p.add_argument(
        "--trusted-type", action="append", default=[], metavar="T",
        help="a skops type to trust beyond skops' defaults; repeatable",
    )
    p.add_argument("--trust-root", help="name of a trust root configured on the loader")
    p.add_argument("--out", type=Path, help="where to write the skops model (required unless --execution sandbox)")
    p.add_argument(
        "--execution", choices=("server", "sandbox"), default="server",
        help="server: verify and save the converted model; sandbox: verify and serve it in a confined worker "
        "of the loader, and print its handle",
    )
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--max-bytes", type=int, default=1 << 30, help="largest model accepted back")
    p.add_argument("file", help="model file or model directory, under the loader's models root")
    p.set_defaults(func=_load)

    p = sub.add_parser("unload", help="end a model served in the sandbox (`load --execution sandbox`)")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("handle")
    p.set_defaults(func=_unload)

    p = sub.add_parser("trust", help="inspect the configured trusted roots")
    trust = p.add_subparsers(dest="trust_command", required=True)
    p = trust.add_parser("show", help="list each root's CAs, logs and TSAs with their validity windows")
    p.add_argument(
        "--trust-config", action="append", default=[], metavar="[NAME=]FILE",
        help="as for serve; 'production' (the pinned root) is listed unless replaced by production=FILE",
    )
    p.add_argument("--warn-days", type=int, default=30, help="flag what ends within this many days")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_trust_show)

    p = sub.add_parser("health", help="exit 0 when the loader answers SERVING")
    p.add_argument("--endpoint", required=True)
    p.add_argument(
        "--details", action="store_true",
        help="also print what the children are confined by (Landlock, seccomp, rlimits) and what is trusted",
    )
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(func=_health)

    args = parser.parse_args(argv)
    return int(args.func(args))
