"""`docker` sandbox mode: an ephemeral, network-less loader container for one load.

For `mlserver start` on a host with Docker and no compose stack. The container sees only the
artefact and its bundle (read-only) and the trust roots, and is removed afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import docker.errors
from docker.types import Mount

import docker
from runtime.errors import ModelRefused
from runtime.settings import RuntimeSettings

SECCOMP_PROFILE = Path(__file__).with_name("seccomp-loader.json")
_MODELS = "/models"
_SOCKET_DIR = "/run/loader"


def hardened_loader_options() -> dict[str, Any]:
    """`containers.run` options matching compose.yaml's loader service: no network, read-only
    root, no capabilities, the loader seccomp profile, memory/pids/cpu limits, capped logs."""
    return {
        "network_mode": "none",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true", f"seccomp={SECCOMP_PROFILE.read_text()}"],
        "mem_limit": "2g",
        "pids_limit": 64,
        "nano_cpus": 1_500_000_000,
        "tmpfs": {"/tmp": "size=64m"},
        "log_config": {"type": "local", "config": {"max-size": "1m"}},
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


class EphemeralLoader:
    """Start a hardened loader container, yield its endpoint, remove it."""

    def __init__(self, settings: RuntimeSettings, artefact: Path, bundle: Path) -> None:
        self._settings = settings
        self._artefact = artefact
        self._bundle = bundle
        self._tmp = ""
        self._container: Any = None

    @property
    def artefact_name(self) -> str:
        return self._artefact.name

    def start(self) -> str:
        try:
            client = docker.from_env(timeout=30)  # type: ignore[attr-defined]
            client.ping()
        except docker.errors.DockerException as exc:
            raise ModelRefused(f"docker sandbox mode: the Docker daemon is unreachable ({exc})", 503) from None
        self._tmp = tempfile.mkdtemp(prefix="mlserver-sigstore-")
        os.chmod(self._tmp, 0o777)  # the container's loader user creates the socket here
        trust_mounts, trust_args = _trust_mounts(self._settings.docker_trust_configs)
        mounts = [
            Mount(f"{_MODELS}/{self._artefact.name}", str(self._artefact), type="bind", read_only=True),
            Mount(f"{_MODELS}/{self._artefact.name}.sigstore.json", str(self._bundle), type="bind", read_only=True),
            Mount(_SOCKET_DIR, self._tmp, type="bind"),
            *trust_mounts,
        ]
        user = None if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"
        try:
            self._container = client.containers.run(
                self._settings.docker_image,
                command=["serve", f"--socket={_SOCKET_DIR}/loader.sock", f"--models-root={_MODELS}", *trust_args],
                detach=True,
                user=user,
                mounts=mounts,
                labels={"mlserver-sigstore.role": "ephemeral-loader"},
                **hardened_loader_options(),
            )
        except docker.errors.DockerException as exc:
            self.stop()
            raise ModelRefused(f"docker sandbox mode: could not start {self._settings.docker_image}: {exc}", 503) from None
        return f"unix://{self._tmp}/loader.sock"

    async def wait_ready(self) -> None:
        socket_path = Path(self._tmp) / "loader.sock"
        container = self._container
        assert container is not None, "start() first"
        deadline = time.monotonic() + self._settings.docker_start_seconds
        while time.monotonic() < deadline:
            if socket_path.exists():
                return
            container.reload()
            if container.status in ("exited", "dead"):
                logs = container.logs(tail=20).decode(errors="replace")
                raise ModelRefused(f"docker sandbox mode: the loader container exited: {logs}", 503)
            await asyncio.sleep(0.1)
        raise ModelRefused(
            f"docker sandbox mode: the loader did not start within {self._settings.docker_start_seconds:g} s", 504
        )

    def stop(self) -> None:
        if self._container is not None:
            try:
                self._container.remove(force=True)
            except docker.errors.DockerException:
                pass
            self._container = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = ""
