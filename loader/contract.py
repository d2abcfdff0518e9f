"""What the VerifyAndLoad contract says beyond `loader/proto/v1/loader.proto`, for both sides.

The wire format of the side channel that passes descriptors, and the rule for the arrays that
cross to and from a served model. The client, the loader and the runtime take them from here.
"""

from __future__ import annotations

import json
import mmap
import struct
from typing import Any

# The side channel of a `unix:` endpoint is the gRPC socket's path with this suffix.
FD_SOCKET_SUFFIX = ".fd"
# A line `wait <handle>` on the side channel waits for the model of a call still running.
WAIT_PREFIX = "wait "
# Trailing metadata of a VerifyAndLoad (EXECUTION_AUTO) whose child could not convert the model:
# the ticket under which the loader keeps the verified bytes for Serve (no second verification).
SANDBOX_TICKET_METADATA = "sandbox-ticket"
# The side channel's answer when the loader's kernel will not pass a descriptor to this client
# (gVisor, to a process outside its sandbox): the client asks for the model streamed instead.
DESCRIPTORS_REFUSED = "descriptors do not pass to this client; ask for the model streamed"

# A served model's worker frames every message, on its socket to the loader and on a caller's
# direct channel alike: FRAME (4-byte little-endian header length, 8-byte little-endian body
# length), the JSON header (at most MAX_FRAME_HEADER bytes), the body (buffers one after another).
FRAME = struct.Struct("<IQ")
MAX_FRAME_HEADER = 1 << 16


# What is passed on of a text a confined process reports (an error, a refusal), in UTF-8 bytes:
# it travels in gRPC status details, percent-encoded (up to 3x), under gRPC's 8 KiB metadata limit.
MAX_REPORTED_BYTES = 1500


def reported_text(value: object, limit: int = MAX_REPORTED_BYTES) -> str:
    """A text a confined process sent (an error, a refusal), safe to pass on: lone surrogates and
    other characters UTF-8 cannot encode escaped, cut to `limit` UTF-8 bytes. A value that is not
    text (a forged header) is named by its type only."""
    text = value if isinstance(value, str) else f"(a {type(value).__name__}, not text)"
    return text.encode("utf-8", "backslashreplace")[:limit].decode("utf-8", "ignore")


def load_header(raw: bytes | bytearray) -> dict[str, Any] | None:
    """A JSON header sent by a confined process, as a dict; None when it is not one: malformed,
    not an object, or nested past the parser's depth (json raises RecursionError there, not
    ValueError, and a 64 KiB header can nest 65,536 deep)."""
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def frame_head(header: dict[str, object], body_bytes: int) -> bytes:
    """FRAME and the JSON header of a message whose body is `body_bytes` long."""
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return FRAME.pack(len(encoded), body_bytes) + encoded


def map_sealed(fd: int, size: int, populate: bool = False) -> mmap.mmap:
    """A read-only mapping of the sealed memfd `fd` (`size` > 0 bytes), on either side.

    Private, not shared: the seals keep the bytes from changing and PROT_READ keeps pages from
    being copied, so the two read the same; but gVisor refuses a shared mapping of a
    write-sealed memfd opened read-write (EPERM), where Linux allows it."""
    flags = mmap.MAP_PRIVATE | (mmap.MAP_POPULATE if populate else 0)
    return mmap.mmap(fd, size, flags, mmap.PROT_READ)

# The one rule for the arrays that cross to and from a served model (loader.v1.Array): bool,
# little-endian integers and floats, fixed-width strings of at most ARRAY_MAX_CHARS characters;
# at most ARRAY_MAX_DIMS dimensions. No object dtype and no pickle, either way.
_ARRAY_NUMERIC = frozenset({"|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8"})
ARRAY_MAX_CHARS = 4096
ARRAY_MAX_DIMS = 4


def array_itemsize(dtype: str) -> int | None:
    """Bytes per element of a dtype string from the fixed list; None for any other string."""
    if dtype in _ARRAY_NUMERIC:
        return 1 if dtype[1] == "b" else int(dtype[2:])
    for prefix, width in (("<U", 4), ("|S", 1)):
        digits = dtype[len(prefix) :]
        if dtype.startswith(prefix) and digits.isdigit() and digits[0] != "0" and int(digits) <= ARRAY_MAX_CHARS:
            return int(digits) * width
    return None


def array_shape(shape: object) -> tuple[int, ...] | None:
    """`shape` as a tuple if it is 1 to ARRAY_MAX_DIMS non-negative ints; None otherwise."""
    if not isinstance(shape, (list, tuple)) or not 0 < len(shape) <= ARRAY_MAX_DIMS:
        return None
    if not all(type(n) is int and 0 <= n < 1 << 40 for n in shape):
        return None
    return tuple(shape)
