"""The children's filesystem where Landlock is missing (gVisor implements none): a chroot into
the image's software tree.

The loader image holds its software (/usr, /opt: the interpreter, the venv, the system
libraries) a second time under VIEW_ROOT, hard-linked (docker/Dockerfile); the models, the trust
roots, /etc, /proc, /run and /tmp stay outside. Inside VIEW_ROOT the same paths lead to the same
files, so a module imported before the chroot imports its submodules after it; a folder given as
VIEW_ROOT/x (user code) is /x inside, and `enter` rewrites `sys.path` so. A child enters a user
namespace of its own (no privilege needed, none gained outside it), chroots into VIEW_ROOT and
drops every capability that namespace gave it: from then on it reads only the image's software,
and its seccomp filter (no chroot, unshare, mount) keeps it there.

Only where the tree is present and the kernel lets an unprivileged process make a user namespace
(gVisor does; runsc needs the profile in runtime/seccomp-loader-gvisor.json). `probe` says
whether it holds here, in a throwaway process, so the loader can say so at start.
"""

from __future__ import annotations

import ctypes
import os
import sys

VIEW_ROOT = "/sandbox"
_CLONE_NEWUSER = 0x10000000
_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def present(root: str = VIEW_ROOT) -> bool:
    """Whether this image has the software tree (its marker, VIEW_ROOT/sandbox, links to /)."""
    marker = os.path.join(root, root.lstrip("/"))
    return os.path.islink(marker) and os.readlink(marker) == "/"


def inside(path: str, root: str = VIEW_ROOT) -> bool:
    """Whether `path` can be read after entering the view: it resolves under `root`."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root + "/")


def require_inside(paths: tuple[str, ...], root: str = VIEW_ROOT) -> None:
    """ValueError naming the first of `paths` (folders a confined process must read, such as
    user code) that lies outside `root`, and where to mount it instead."""
    for path in paths:
        if not inside(path, root):
            raise ValueError(
                f"{path} is outside the children's view ({root}, used because Landlock is missing): "
                f"mount it under {root} in the loader's container (e.g. {root}/user-code), where "
                f"a confined process reads it at the same path"
            )


def enter(root: str = VIEW_ROOT, needed: tuple[str, ...] = ()) -> None:
    """Confine the calling (single-threaded) process to `root`: a user namespace of its own, a
    chroot, no capabilities. `needed` are folders the caller must still read (user code): each
    must lie under `root`, else nothing is entered and ValueError says what to move where."""
    require_inside(needed, root)
    _check(_libc.unshare(_CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    _check(_libc.chroot(root.encode()), f"chroot({root})")
    os.chdir("/")
    # The namespace gave the process every capability in it (CAP_SYS_CHROOT would undo the
    # chroot): none are left.
    none = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), none), "capset")
    # Folders given under `root` (user code) are at the same place seen from inside, less `root`
    # (the marker link would lead there too, but gVisor resolves paths through it wrongly).
    sys.path[:] = [seen_from_inside(entry, root) for entry in sys.path]


def seen_from_inside(path: str, root: str = VIEW_ROOT) -> str:
    """`path` as a process inside the view names it: `root`/x is /x there; others are unchanged."""
    return path[len(root):] if path.startswith(root + "/") else path


def require_outside(named: dict[str, str], root: str = VIEW_ROOT) -> None:
    """ValueError naming the first of `named` ({what: path}: the models root, trust configs, the
    socket folder) that lies inside `root`, where every confined process could read it."""
    for what, path in named.items():
        if inside(path, root):
            raise ValueError(
                f"{what} {path} is inside the children's view ({root}): every confined process could "
                f"read it there; mount it outside {root} (only --user-code belongs inside)"
            )


def out_of_step(root: str = VIEW_ROOT, folders: list[str] | None = None, files: list[str] | None = None) -> str | None:
    """What differs between the software at / and its copy under `root` (None: nothing found).

    An image built on the loader's that installs packages into /opt or /usr changes them at /
    only: the children would then import older or missing code. Compared: each folder on
    sys.path (its entries, so an added, removed or upgraded package's dist-info shows), and the
    files of the modules imported so far (their inodes: the copy is hard-linked)."""
    if folders is None:  # only the software the tree copies (not a launch directory on sys.path)
        folders = [folder for folder in sys.path if folder.startswith(("/usr/", "/opt/"))]
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        try:
            ours, theirs = set(os.listdir(folder)), set(os.listdir(root + folder))
        except OSError as exc:
            return f"{root}{folder} cannot be listed ({exc.strerror})"
        if ours != theirs:
            shown = sorted(ours ^ theirs)[:3]
            return f"{folder} and {root}{folder} differ ({', '.join(shown)})"
    if files is None:
        files = [getattr(module, "__file__", None) or "" for module in list(sys.modules.values())]
        files = [path for path in files if isinstance(path, str) and path.startswith(("/usr/", "/opt/"))]
    for path in files:
        try:
            if os.stat(path).st_ino != os.stat(root + path).st_ino:
                return f"{path} is not the file at {root}{path}"
        except OSError:
            return f"{root}{path} is missing"
    return None


def probe(root: str = VIEW_ROOT, folders: list[str] | None = None, files: list[str] | None = None) -> str | None:
    """None when a process here can enter the view; otherwise why not (the tree is missing, or
    the kernel or the container's profile refuses a step)."""
    if not present(root):
        return f"{root} (the image's software tree) is missing"
    differs = out_of_step(root, folders, files)
    if differs:
        return (
            f"the image's software tree is out of step with its software: {differs}; an image built on "
            f"the loader's must install into both (see docs/gvisor.md)"
        )
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked probe
        os.close(read)
        try:
            enter(root)
            reason = b"" if os.path.realpath(root) == "/" else b"the chroot did not take"
        except OSError as exc:
            reason = str(exc.strerror or exc).encode()[:500]
        os.write(write, reason)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode(errors="replace")
    os.waitpid(pid, 0)
    return answer or None
