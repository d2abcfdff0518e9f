"""`docker` sandbox mode: an ephemeral, network-less loader container for one load.

For `mlserver start` on a host with Docker and no compose stack. The container sees only the
artefact and its bundle (read-only) and the trust roots, and is removed afterwards. Every
Docker call runs on a worker thread and readiness is the loader's own gRPC health check, so
MLServer's event loop (and every other model's inference) never waits on Docker.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import docker.errors
import grpc
from docker.types import Mount
from grpc_health.v1 import health_pb2, health_pb2_grpc

import docker
from runtime.errors import ModelRefused
from runtime.settings import RuntimeSettings

SECCOMP_PROFILE = Path(__file__).with_name("seccomp-loader.json")
# compose.yaml's loader service extends the same file: one definition of the hardening.
HARDENING = Path(__file__).with_name("loader-hardening.json")
_MODELS = "/models"
_SOCKET_DIR = "/run/loader"
_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _bytes(size: str | int) -> int:
    text = str(size).strip().lower().rstrip("b")
    return int(text[:-1]) * _SIZE_UNITS[text[-1]] if text[-1] in _SIZE_UNITS else int(text)


def hardened_loader_options() -> dict[str, Any]:
    """`containers.run` options for runtime/loader-hardening.json (compose.yaml's loader
    hardening): no network, read-only root, no capabilities, the loader seccomp profile,
    memory/pids/cpu limits, capped logs."""
    spec = json.loads(HARDENING.read_text())["services"]["loader"]
    security = []
    for option in spec["security_opt"]:
        key, _, value = option.partition("=")
        # compose passes the profile's path; the Docker API takes the profile itself.
        security.append(f"seccomp={SECCOMP_PROFILE.read_text()}" if key == "seccomp" else option)
    tmpfs = dict(item.split(":", 1) for item in spec["tmpfs"])
    return {
        "network_mode": spec["network_mode"],
        "read_only": spec["read_only"],
        "cap_drop": spec["cap_drop"],
        "security_opt": security,
        "mem_limit": _bytes(spec["mem_limit"]),
        "pids_limit": spec["pids_limit"],
        "nano_cpus": int(float(spec["cpus"]) * 1e9),
        "tmpfs": tmpfs,
        "log_config": {"type": spec["logging"]["driver"], "config": spec["logging"]["options"]},
    }


def _trust_mounts(spec: str) -> tuple[list[Mount], list[str]]:
    mounts, args = [], []
    for i, item in enumerate(filter(None, (s.strip() for s in spec.split(",")))):
        name, sep, path = item.partition("=")
        if not sep:
            raise ModelRefused(f"MLSERVER_SIGSTORE_DOCKER_TRUST_CONFIGS entry {item!r} is not NAME=PATH", 500)
        target = f"/trust/{i}.json"
        mounts.append(Mount(target, os.path.abspath(path), type="bind", read_only=True))
        args.append(f"--trust-config={name}={target}")
    return mounts, args


async def _healthy(endpoint: str, timeout: float) -> bool:
    try:
        async with grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout, wait_for_ready=False
            )
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class EphemeralLoader:
    """Start a hardened loader container, yield its endpoint, remove it.

    `start`, `wait_ready` and `stop` are coroutines; the blocking Docker SDK calls inside them
    run on worker threads.
    """

    def __init__(self, settings: RuntimeSettings, artefact: Path, bundle: Path) -> None:
        self._settings = settings
        self._artefact = artefact
        self._bundle = bundle
        self._tmp = ""
        self._container: Any = None

    @property
    def artefact_name(self) -> str:
        return self._artefact.name

    @property
    def bundle_name(self) -> str:
        """The bundle's path inside the container's models root (its own file name)."""
        return self._bundle.name

    @property
    def endpoint(self) -> str:
        return f"unix://{self._tmp}/loader.sock"

    async def start(self) -> str:
        """Start the container; return the gRPC endpoint it will serve on."""
        await asyncio.to_thread(self._start)
        return self.endpoint

    def _start(self) -> None:
        try:
            client = docker.from_env(timeout=30)  # type: ignore[attr-defined]
            client.ping()
        except docker.errors.DockerException as exc:
            raise ModelRefused(f"docker sandbox mode: the Docker daemon is unreachable ({exc})", 503) from None
        if self._bundle.name == self._artefact.name:
            raise ModelRefused(f"docker sandbox mode: the bundle {self._bundle} has the artefact's file name", 400)
        self._tmp = tempfile.mkdtemp(prefix="mlserver-sigstore-")
        os.chmod(self._tmp, 0o777)  # the container's loader user creates the socket here
        trust_mounts, trust_args = _trust_mounts(self._settings.docker_trust_configs)
        mounts = [
            Mount(f"{_MODELS}/{self._artefact.name}", str(self._artefact), type="bind", read_only=True),
            Mount(f"{_MODELS}/{self.bundle_name}", str(self._bundle), type="bind", read_only=True),
            Mount(_SOCKET_DIR, self._tmp, type="bind"),
            *trust_mounts,
        ]
        user = None if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"
        try:
            # Created, then started: a container that fails to start is still ours to remove.
            self._container = client.containers.create(
                self._settings.docker_image,
                # One load: no pre-forked children to keep waiting.
                command=["serve", f"--socket={_SOCKET_DIR}/loader.sock", f"--models-root={_MODELS}",
                         "--child-pool=0", "--cache-mb=0", *trust_args],
                detach=True,
                user=user,
                mounts=mounts,
                labels={"mlserver-sigstore.role": "ephemeral-loader"},
                **hardened_loader_options(),
            )
            self._container.start()
        except docker.errors.DockerException as exc:
            self._stop()
            raise ModelRefused(f"docker sandbox mode: could not start {self._settings.docker_image}: {exc}", 503) from None

    async def wait_ready(self) -> None:
        """Return once the loader answers its gRPC health check; fail if the container exits."""
        container = self._container
        assert container is not None, "start() first"
        deadline = time.monotonic() + self._settings.docker_start_seconds
        while time.monotonic() < deadline:
            if await _healthy(self.endpoint, timeout=min(1.0, max(deadline - time.monotonic(), 0.1))):
                return
            await asyncio.to_thread(container.reload)
            if container.status in ("exited", "dead"):
                logs = (await asyncio.to_thread(container.logs, tail=20)).decode(errors="replace")
                raise ModelRefused(f"docker sandbox mode: the loader container exited: {logs}", 503)
            await asyncio.sleep(0.1)
        raise ModelRefused(
            f"docker sandbox mode: the loader did not start within {self._settings.docker_start_seconds:g} s", 504
        )

    async def stop(self) -> None:
        """Remove the container and its socket folder."""
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        if self._container is not None:
            try:
                self._container.remove(force=True)
            except docker.errors.DockerException:
                pass
            self._container = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = ""
