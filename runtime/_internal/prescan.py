"""Pre-scan of a skops archive before skops parses it: one pass over schema.json and the members.

skops builds its node tree recursively, memoises nodes by `__id__` (so repeated ids make its type
audit exponential), reads each member once per reference, and lets numpy allocate whatever an
`.npy` header declares. Here every node is visited once, its type collected, and the archive is
refused unless it is a plain tree of bounded size whose arrays are exactly as large as declared.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import io
import json
import mmap
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

import numpy as np
from numpy.lib import format as npy_format

from runtime._internal.allowlist import ALLOWLIST, FUNCTIONS
from runtime._internal.refusal import refuse
from runtime.errors import ModelRefused

MAX_ZIP_ENTRIES = 100_000
MAX_SCHEMA_BYTES = 64 << 20
MAX_NODES = 2_000_000
MAX_DEPTH = 200
MAX_UNCOMPRESSED_BYTES = 4 << 30
MAX_COMPRESSION_RATIO = 200
MAX_JSON_CONTENT = 1 << 20
SPARSE_MEMBERS = frozenset({"data.npy", "indices.npy", "indptr.npy", "shape.npy", "format.npy", "row.npy", "col.npy"})
SPARSE_FORMATS = frozenset({b"csr", b"csc", b"coo"})

# skops node kinds the allowlisted families need. Methods, operators and free-form reduce
# constructors are never needed by them and are refused. Masked arrays (a search's cv_results_)
# hold exactly a data and a mask array.
LEAF_LOADERS = frozenset({"JsonNode", "TypeNode", "NdArrayNode", "SparseMatrixNode", "DTypeNode", "FunctionNode", "SliceNode"})
ALLOWED_LOADERS = LEAF_LOADERS | {
    "ObjectNode", "DictNode", "ListNode", "TupleNode", "SetNode", "CachedNode",
    "TreeNode", "LossNode", "RandomStateNode", "RandomGeneratorNode", "DefaultDictNode",
    "PartialNode", "FunctionNode", "MaskedArrayNode",
}
# Cython types whose __setstate__ indexes its state tuple without bounds checks (a short tuple
# crashes skops' construct, before any validator runs): their exact arity.
STATE_ARITY = {
    "sklearn.neighbors._kd_tree.KDTree": 13,
    "sklearn.neighbors._ball_tree.BallTree": 13,
    **{f"sklearn.metrics._dist_metrics.{m}Distance64": 3 for m in ("Euclidean", "Manhattan", "Chebyshev", "Minkowski")},
}
# Node kinds whose type skops calls with the node's content: the types honest dumps name.
FIXED_TYPES: dict[str, Any] = {
    "ListNode": {"builtins.list"}.__contains__,
    "TupleNode": {"builtins.tuple"}.__contains__,
    "SetNode": {"builtins.set", "builtins.frozenset"}.__contains__,
    "DefaultDictNode": {"collections.defaultdict"}.__contains__,
    "PartialNode": {"functools.partial"}.__contains__,
    "RandomStateNode": {"numpy.random.mtrand.RandomState"}.__contains__,
    "RandomGeneratorNode": {"numpy.random._generator.Generator"}.__contains__,
    "MaskedArrayNode": {"numpy.ma.MaskedArray"}.__contains__,
    # Loss classes (skops builds the named class with the node's arguments, then sets its state).
    "LossNode": lambda name: name.startswith(("sklearn._loss.", "sklearn.linear_model._sgd_fast.")),
}
MAX_SEED_POOL = 64
MAX_TREE_FEATURES = 10_000_000  # as validators.common.MAX_FEATURES
MAX_TREE_OUTPUTS = 10_000  # as the trees validator's n_outputs_
# Nodes whose children skops reads from named content fields, in its order.
_NAMED_CHILDREN = {
    "DefaultDictNode": ("main", "default_factory"),
    "PartialNode": ("func", "args", "kwds", "namespace"),
    "RandomGeneratorNode": ("bit_generator", "seed_seq"),
    "MaskedArrayNode": ("data", "mask"),
}


@functools.lru_cache(maxsize=None)
def behaviour_of(qualified: str) -> frozenset[str]:
    """Names under which the allowlisted class `qualified` has methods, properties or other
    descriptors (what an instance attribute of the same name would replace). Empty for types
    outside the allowlist: nothing named by a schema is imported before the allowlist has
    accepted it (types an operator trusts beyond it are taken as they are)."""
    if qualified not in ALLOWLIST:
        return frozenset()
    module, _, name = qualified.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return frozenset()
    if not isinstance(cls, type):
        return frozenset()
    return frozenset(
        attr for attr in dir(cls)
        if callable(found := inspect.getattr_static(cls, attr, None)) or hasattr(type(found), "__get__")
    )


@dataclass
class ScanResult:
    """What the pre-scan found: every type named in the schema, and the total declared array bytes."""

    types: set[str] = field(default_factory=set)
    nodes: int = 0
    array_bytes: int = 0
    schema: dict[str, Any] = field(default_factory=dict, repr=False)


# The header numpy writes for a plain dtype (format 1.0-3.0): parsed here without `literal_eval`
# (which compiles each header); anything else goes through numpy's own parser.
_PLAIN_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[A-Za-z][0-9]*)', 'fortran_order': (True|False), "
    rb"'shape': \((|[0-9]{1,19},|[0-9]{1,19}(?:, [0-9]{1,19}){1,63})\), \} *\n"
)
_MAX_HEADER = 10_000  # numpy's own default bound on an .npy header


@dataclass(frozen=True)
class NpyHeader:
    """What an `.npy` header declares about the data that follows it."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    length: int  # bytes from the magic string to the data

    @property
    def count(self) -> int:
        count = 1
        for dim in self.shape:
            count *= int(dim)
        return count


def read_npy_header(stream: Any) -> NpyHeader:
    """Read an `.npy` header from `stream` (left at the data); ValueError if it is not one."""
    magic = stream.read(8)
    if len(magic) != 8 or magic[:6] != b"\x93NUMPY" or magic[6] not in (1, 2, 3) or magic[7] != 0:
        raise ValueError(f"not an .npy header: {magic!r}")
    width = 2 if magic[6] == 1 else 4
    length_bytes = stream.read(width)
    length = int.from_bytes(length_bytes, "little")
    if len(length_bytes) != width or length > _MAX_HEADER:
        raise ValueError(f"an .npy header of {length} bytes")
    header = stream.read(length)
    plain = _PLAIN_HEADER.fullmatch(header)
    if plain is not None:
        dtype = np.dtype(plain[1].decode())
        shape: tuple[int, ...] = tuple(int(d) for d in plain[3].split(b",") if d.strip())
        fortran = plain[2] == b"True"
    else:
        shape, fortran, dtype = _numpy_header(magic + length_bytes + header)
    if any(dim < 0 for dim in shape):
        raise ValueError("a negative dimension")
    return NpyHeader(dtype, tuple(shape), bool(fortran), 8 + width + length)


def _npy_size(stream: Any, where: str) -> tuple[int, int]:
    """(declared data bytes, header bytes) of an .npy stream; object dtypes are refused."""
    try:
        header = read_npy_header(stream)
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds for a bad header
        raise refuse(f"array {where} has an unreadable header: {exc}") from None
    if header.dtype.hasobject:
        raise refuse(f"array {where} has an object dtype")
    if header.dtype.itemsize == 0:
        # Its items take no bytes, so no size cap bounds how many it declares.
        raise refuse(f"array {where} has a zero-size dtype {header.dtype.str!r}")
    return header.count * header.dtype.itemsize, header.length


def _numpy_header(raw: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    stream = io.BytesIO(raw)
    version = npy_format.read_magic(stream)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(stream)  # type: ignore[no-any-return]
    return npy_format.read_array_header_2_0(stream)  # type: ignore[no-any-return]


def _check_member_size(info: zipfile.ZipInfo, where: str) -> None:
    if info.file_size > 1 << 20 and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise refuse(
            f"archive entry {where} expands {info.file_size // max(info.compress_size, 1)}x: refused as a zip bomb"
        )


def _check_npy(archive: zipfile.ZipFile, name: str, where: str) -> int:
    info = archive.getinfo(name)
    _check_member_size(info, where)
    # Where the array reader reads a member in place (`skops_reader.SkopsArchive`), its header
    # is read here the same way: what is checked is what will be read.
    in_place = getattr(archive, "in_place", None)
    opened = archive.member_data(name) if in_place is not None and in_place(info) else archive.open(info)  # type: ignore[attr-defined]
    with opened as stream:
        declared, header = _npy_size(stream, where)
    if declared + header != info.file_size:
        raise refuse(
            f"array {where} declares {declared} bytes of data but its member holds {info.file_size - header}"
        )
    return declared


def _check_npz(archive: zipfile.ZipFile, name: str) -> int:
    """A sparse matrix is a nested archive: bounded by the same rules, and csr/csc/coo only."""
    info = archive.getinfo(name)
    _check_member_size(info, name)
    with archive.open(info) as stream:
        raw = stream.read()
    try:
        inner = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile:
        raise refuse(f"sparse member {name} is not an npz archive") from None
    with inner:
        names = inner.namelist()
        if len(names) != len(set(names)) or not set(names) <= SPARSE_MEMBERS:
            raise refuse(f"sparse member {name} holds unexpected entries {sorted(names)}")
        total = 0
        for member in names:
            total += _check_npy(inner, member, f"{name}/{member}")
        if "format.npy" in names:
            with inner.open("format.npy") as stream:
                fmt = np.load(io.BytesIO(stream.read()), allow_pickle=False)
            if fmt.dtype.kind != "S" or fmt.tobytes().rstrip(b"\0") not in SPARSE_FORMATS:
                raise refuse(f"sparse member {name} has format {fmt!r}; only csr, csc and coo are accepted")
    return total + len(raw)


class _Scanner:
    """Visits each node of schema.json once and computes what skops' audit would walk.

    skops memoises nodes by `__id__`: a later node with a known id is replaced by the first one
    (never parsed) and re-audited per reference. Honest dumps repeat shared sub-estimators in full;
    a crafted schema repeats stubs so the audit doubles per level. The expanded size (each repeat
    counted at the size of its first definition) is what is capped.
    """

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        self.members = {info.filename: info for info in archive.infolist()}
        self.result = ScanResult()
        self.expanded: dict[Any, int] = {}  # id -> expanded node count of its (finished) definition
        self.open_ids: set[Any] = set()
        self.definitions: dict[int, dict[str, Any]] = {}  # id -> the node skops builds for it
        self.files_used: set[str] = set()
        self.total = 0

    def scan(self, root: Any) -> ScanResult:
        self.total = self._visit(root, 0)
        self.result.nodes = self.total
        return self.result

    def _count(self, n: int) -> None:
        self.total += n
        if self.total > MAX_NODES:
            raise refuse(f"its schema expands to more than {MAX_NODES} nodes (shared references included)")

    def _visit(self, state: Any, depth: int) -> int:
        # Depth is capped far below Python's recursion limit before each descent.
        if depth > MAX_DEPTH:
            raise refuse(f"its schema nests deeper than {MAX_DEPTH} levels")
        if not isinstance(state, dict) or "__loader__" not in state:
            raise refuse("its schema holds a node without a loader")
        loader = state["__loader__"]
        if loader not in ALLOWED_LOADERS:
            raise refuse(f"its schema uses skops node kind {loader!r}, which no allowlisted estimator needs")
        node_id = state.get("__id__")
        # skops shares a node only under a truthy id (and hashes whatever it gets): the ids it
        # writes are positive integers, and nothing else is accepted.
        if node_id is not None and (type(node_id) is not int or node_id <= 0):
            raise refuse(f"its schema holds a node id {node_id!r} that is not a positive integer")
        if node_id is not None and (node_id in self.open_ids or (loader == "CachedNode" and node_id not in self.expanded)):
            raise refuse(f"a shared reference to node {node_id!r} points at an enclosing or unknown node")
        if node_id is not None and node_id in self.expanded:
            size = self.expanded[node_id]  # skops reuses the first definition and audits it again
            self._count(size)
            return size
        if loader == "CachedNode":
            raise refuse("a shared reference without a node id")
        module, name = state.get("__module__"), state.get("__class__")
        if not isinstance(module, str) or not isinstance(name, str):
            raise refuse("its schema holds a node without a type name")
        self.result.types.add(f"{module}.{name}")
        if loader == "FunctionNode" and f"{module}.{name}" not in FUNCTIONS:
            raise refuse(
                f"it holds the function {module}.{name}; only {sorted(FUNCTIONS)} are accepted in this process "
                "(a model that calls other code must be served in the sandbox)"
            )
        self._count(1)
        fixed = FIXED_TYPES.get(loader)
        if fixed is not None and not fixed(f"{module}.{name}"):
            # skops calls the named type with the node's content (a list node naming
            # numpy.ndarray would build an uninitialised array of the list's shape).
            raise refuse(f"a {loader} in its schema names the type {module}.{name}")
        content = state.get("content")
        arity = STATE_ARITY.get(f"{module}.{name}")
        if arity is not None:
            if loader != "ObjectNode" or not isinstance(content, dict) or content.get("__loader__") != "TupleNode" or not isinstance(content.get("content"), list) or len(content["content"]) != arity:
                raise refuse(f"the state of {module}.{name} is not a tuple of {arity} items")
            if content.get("__id__") in self.expanded:
                # skops would pass the earlier node of that id, whatever its length.
                raise refuse(f"the state of {module}.{name} is a shared reference, not its own tuple")
        if loader == "ObjectNode" and module.split(".")[:2] == ["numpy", "random"]:
            # skops would build it with __new__ and no __init__ (a bit generator's state pointer
            # stays NULL, and its __setstate__ writes through it): only their own node kinds.
            raise refuse(f"an ObjectNode in its schema builds {module}.{name}, which only its own node kind may")
        if loader in ("ObjectNode", "LossNode") and arity is None and content is not None:
            self._check_attributes(f"{module}.{name}", self._resolved(content))
        if loader == "RandomGeneratorNode":
            self._check_seed_sequence(state)
            # skops builds the bit generator numpy.random.<name> from a string in the state:
            # declared here as a type, so that the allowlist decides on it like on any other.
            self.result.types.add(self._bit_generator_type(state))
        if node_id is not None:
            self.open_ids.add(node_id)
            self.definitions[node_id] = state
        size = 1
        children = self._leaf(loader, state) if loader in LEAF_LOADERS else self._children(loader, state)
        for child in children:
            size += self._visit(child, depth + 1)
        if node_id is not None:
            self.open_ids.discard(node_id)
            self.expanded[node_id] = size
        return size

    def _leaf(self, loader: str, state: dict[str, Any]) -> list[Any]:
        if loader == "JsonNode":
            content = state.get("content")
            if not isinstance(content, str) or len(content) > MAX_JSON_CONTENT:
                raise refuse("a JSON value in its schema is not a bounded string")
            return []
        if loader == "SliceNode":
            content = state.get("content")
            if not isinstance(content, dict) or not all(v is None or type(v) is int for v in content.values()):
                raise refuse("a slice in its schema holds something other than integers")
            return []
        if loader == "DTypeNode":
            return [state["content"]] if isinstance(state.get("content"), dict) else []
        if loader == "NdArrayNode" and state.get("type") == "json":
            content, shape = state.get("content"), state.get("shape")
            if not isinstance(content, list) or shape is None:
                raise refuse("an object array in its schema is malformed")
            return [*content, shape]
        if loader in ("NdArrayNode", "SparseMatrixNode"):
            name = state.get("file")
            if not isinstance(name, str) or name not in self.members:
                raise refuse(f"an array refers to a missing archive member {name!r}")
            if name in self.files_used:
                raise refuse(f"archive member {name!r} is referenced by more than one array")
            self.files_used.add(name)
            size = _check_npy(self.archive, name, name) if loader == "NdArrayNode" else _check_npz(self.archive, name)
            self.result.array_bytes += size
            if self.result.array_bytes > MAX_UNCOMPRESSED_BYTES:
                raise refuse(f"its arrays declare more than {MAX_UNCOMPRESSED_BYTES} bytes")
        return []

    def _resolved(self, node: Any) -> Any:
        """The node skops builds for `node`: the first one defined under its id, if any (skops
        keeps the first node of an id and reuses it wherever the id appears again)."""
        if isinstance(node, dict):
            node_id = node.get("__id__")
            if type(node_id) is int and node_id in self.definitions:
                return self.definitions[node_id]
        return node

    def _check_attributes(self, qualified: str, attrs: Any) -> None:
        """The state skops hands to a built object (its __setstate__, or its __dict__) must be
        an attribute dict of data: no special names, none of its class's methods or properties."""
        if isinstance(attrs, dict) and attrs.get("__loader__") == "JsonNode" and attrs.get("content") == "null":
            return  # no state (link functions): skops sets nothing
        if not isinstance(attrs, dict) or attrs.get("__loader__") != "DictNode" or not isinstance(attrs.get("content"), dict):
            kind = attrs.get("__loader__") if isinstance(attrs, dict) else type(attrs).__name__
            raise refuse(f"the state of {qualified} is a {kind}, not an attribute dict")
        names = attrs["content"]
        hooks = sorted(k for k in names if k.startswith("__") and k.endswith("__"))
        if hooks:
            # An instance attribute such as __sklearn_is_fitted__ would shadow the class's
            # method (and make a fitted model look unfitted to its validator).
            raise refuse(f"{qualified} sets the special attributes {hooks}")
        shadowing = sorted(set(names) & behaviour_of(qualified))
        if shadowing:
            # `_validate_X_predict = partial(check_array)` on a tree would let predict hand its
            # Cython code rows of any width: state may hold data, never the class's behaviour.
            raise refuse(f"{qualified} sets attributes that replace its class's methods or properties {shadowing}")

    def _bit_generator_type(self, state: dict[str, Any]) -> str:
        """The qualified name of the class skops would build a Generator's bit generator from."""
        try:
            inner = self._resolved(state["content"]["bit_generator"])["content"]
            node = self._resolved(inner["bit_generator"])
            name = json.loads(node["content"]) if node.get("__loader__") == "JsonNode" else None
        except (KeyError, TypeError, AttributeError, ValueError):
            name = None
        found = getattr(np.random, name, None) if isinstance(name, str) else None
        if not (isinstance(found, type) and issubclass(found, np.random.BitGenerator)):
            raise refuse(f"a random generator's bit generator is named {name!r}, not one of numpy's")
        return f"{found.__module__}.{found.__qualname__}"

    def _check_seed_sequence(self, state: dict[str, Any]) -> None:
        # numpy's SeedSequence takes time quadratic in its pool size (numpy's default is 4).
        try:
            # Shared ids (honest dumps share small ints) are built from their first definition.
            pool = self._resolved(self._resolved(state["content"]["seed_seq"])["content"]["pool_size"])
            size = json.loads(pool["content"]) if pool.get("__loader__") == "JsonNode" else None
        except (KeyError, TypeError, ValueError):
            size = None
        if type(size) is not int or not 1 <= size <= MAX_SEED_POOL:
            raise refuse(f"a random generator's seed sequence has pool size {size!r} (at most {MAX_SEED_POOL})")

    def _check_tree_arguments(self, args: Any) -> None:
        """A Tree is built as Tree(n_features, n_classes, n_outputs) before any check runs, and
        allocates n_outputs counters first (found by the fuzzer: n_outputs 2**32 asked for 32 GiB
        inside skops' construct)."""
        args = self._resolved(args)
        items = args.get("content") if isinstance(args, dict) and args.get("__loader__") == "TupleNode" else None
        if not isinstance(items, list) or len(items) != 3:
            raise refuse("a tree's constructor arguments are not (n_features, n_classes, n_outputs)")
        for (node, name, high) in ((items[0], "n_features", MAX_TREE_FEATURES), (items[2], "n_outputs", MAX_TREE_OUTPUTS)):
            node = self._resolved(node)
            value = json.loads(node["content"]) if isinstance(node, dict) and node.get("__loader__") == "JsonNode" and isinstance(node.get("content"), str) else None
            if type(value) is not int or not 1 <= value <= high:
                raise refuse(f"a tree's {name} {value!r} is outside [1, {high}]")

    def _children(self, loader: str, state: dict[str, Any]) -> list[Any]:
        # In the order skops' get_tree builds them: with shared ids, the node skops builds first
        # is the one it keeps, so it must be the one visited first here.
        content = state.get("content")
        if loader in ("TreeNode", "LossNode"):
            reduce = state.get("__reduce__")
            if not isinstance(reduce, dict) or "args" not in reduce:
                raise refuse("a reduced object in its schema has no arguments")
            if loader == "TreeNode":
                self._check_tree_arguments(reduce["args"])
            return [content, reduce["args"]]
        if loader in _NAMED_CHILDREN:
            names = _NAMED_CHILDREN[loader]
            if not isinstance(content, dict) or set(content) != set(names):
                raise refuse(f"a {loader} in its schema does not hold exactly {list(names)}")
            if loader == "MaskedArrayNode" and not all(
                isinstance(content[n], dict) and self._resolved(content[n]).get("__loader__") == "NdArrayNode" for n in names
            ):
                raise refuse("a masked array in its schema is not a data array and a mask array")
            return [content[name] for name in names]
        if loader == "DictNode":
            if not isinstance(content, dict) or "key_types" not in state:
                raise refuse("a dict node in its schema has no content or key types")
            key_types = self._resolved(state["key_types"])
            if not isinstance(key_types, dict) or not isinstance(key_types.get("content"), list) or len(key_types["content"]) != len(content):
                # skops builds every key type, then pairs them with the keys: surplus ones are
                # built and dropped, a place to define shared nodes no check would look at.
                raise refuse("a dict node in its schema has key types that do not match its keys one for one")
            return [state["key_types"], *content.values()]
        if loader in ("ListNode", "TupleNode", "SetNode"):
            if not isinstance(content, list):
                raise refuse(f"a {loader} in its schema has no item list")
            return list(content)
        if isinstance(content, dict) and "__loader__" in content:
            return [content]
        if isinstance(content, dict):
            return list(content.values())
        if content is not None:
            raise refuse(f"a {loader} in its schema has malformed content")
        return []


Buffer = bytes | bytearray | memoryview | mmap.mmap
# What the runtime loads from: a buffer, or a seekable binary file (the passed memfd, read without mapping it).
Source = Buffer | BinaryIO


class _ViewReader(io.RawIOBase):
    """A seekable read-only file over a buffer (e.g. the loader's mmap) that never copies all of it."""

    def __init__(self, data: Buffer) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        end = min(len(self._view), self._pos + len(target))
        n = max(0, end - self._pos)
        target[:n] = self._view[self._pos : end]  # one copy, straight into the reader's buffer
        self._pos += n
        return n


def open_buffer(data: Source) -> BinaryIO:
    """A seekable binary file over `data`, from its start; bytes are shared by BytesIO, other
    buffers read in place, files used as they are."""
    if isinstance(data, bytes):
        return io.BytesIO(data)
    if isinstance(data, (bytearray, memoryview, mmap.mmap)):
        return io.BufferedReader(_ViewReader(data))
    data.seek(0)
    return data


_Archive = TypeVar("_Archive", bound=zipfile.ZipFile)


def open_archive(data: Source, kind: type[_Archive]) -> _Archive:
    """The skops archive in `data` opened for reading (422 if it is not a zip)."""
    try:
        return kind(open_buffer(data))
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:  # ValueError: e.g. a name that is not UTF-8
        raise ModelRefused(f"the converted model is not a skops archive: {exc}", 422) from None


def scan_archive(data: Source) -> ScanResult:
    """Refuse anything but a bounded, plain skops tree; return the types its schema names."""
    with open_archive(data, zipfile.ZipFile) as archive:
        return scan(archive)


def scan(archive: zipfile.ZipFile) -> ScanResult:
    """`scan_archive` on an archive already open (the result keeps the parsed schema)."""
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        raise refuse(f"it has {len(infos)} archive entries (limit {MAX_ZIP_ENTRIES})")
    names = [info.filename for info in infos]
    if len(names) != len(set(names)):
        raise refuse("the archive holds two members with the same name")
    if "schema.json" not in names:
        raise ModelRefused("the converted model has no schema.json: not a skops archive", 422)
    for member in infos:
        _check_member_size(member, repr(member.filename))
    if sum(member.file_size for member in infos) > MAX_UNCOMPRESSED_BYTES:
        raise refuse(f"it expands to more than {MAX_UNCOMPRESSED_BYTES} bytes")
    info = archive.getinfo("schema.json")
    if info.file_size > MAX_SCHEMA_BYTES:
        raise refuse(f"its schema is {info.file_size} bytes (limit {MAX_SCHEMA_BYTES})")
    try:
        schema = json.loads(archive.read("schema.json"))
    except (ValueError, RecursionError, zipfile.BadZipFile, OSError) as exc:
        raise refuse(f"its schema.json is unreadable: {type(exc).__name__}: {exc}") from None
    if not isinstance(schema, dict) or not isinstance(schema.get("protocol"), int):
        raise refuse("its schema.json has no protocol version")
    try:
        result = _Scanner(archive).scan(schema)
    # A member zipfile cannot read (bad headers, encryption or compression flags, ...).
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise refuse(f"its archive is damaged: {type(exc).__name__}: {exc}") from None
    result.schema = schema
    return result
