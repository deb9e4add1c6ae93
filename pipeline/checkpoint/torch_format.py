"""Read PyTorch, Paddle and pickled-NumPy checkpoint files without torch and without running their code.

All three formats are pickles. A pickle may name any importable callable, and a plain
`pickle.load` would import and call it. So every reader here uses a restricted unpickler whose
`find_class` resolves only an explicit allow-list of names (tensor rebuild functions, storage
types, NumPy array reconstruction and plain containers) to builders defined in this module.
Any other name raises `UnsafeCheckpointError` before anything is imported.

Public entry points:
- `load_torch_file(path)`: a `torch.save` file (zip or legacy format). Tensors become NumPy arrays.
- `load_paddle_file(path)`: a `paddle.save` file (.pdparams / .pdopt).
- `load_pickled_npy(path)`: a `.npy` file holding a pickled object (the MTCNN weight files).
"""

import _compat_pickle
import collections
import os
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"
_PICKLE_PROTO_OPCODE = b"\x80"
_NPY_MAGIC = b"\x93NUMPY"


class CheckpointFormatError(ValueError):
    """A checkpoint file is truncated, corrupt or in a layout this reader does not know."""


class UnsafeCheckpointError(CheckpointFormatError):
    """A checkpoint's pickle names a callable outside the allow-list."""

    def __init__(self, path, module, name):
        self.path = str(path)
        self.module = module
        self.name = name
        super().__init__(
            f"{path} is rejected: its pickle would import and call {module}.{name}, which is not an "
            "allowed tensor, storage or container type. Reading it could run code from the file. "
            "If you trust its source, load it with the framework that wrote it and re-save only the tensors."
        )


# ----------------------------------------------------------------------------------------------
# Records built while unpickling a torch file. Storages are read after the pickle (the legacy
# format stores them after it), so tensors are first recorded and then materialized.


class _StorageType:
    """A torch storage class such as torch.FloatStorage: its element type on disk."""

    __slots__ = ("name", "file_dtype")

    def __init__(self, name, file_dtype):
        self.name = name
        self.file_dtype = np.dtype(file_dtype)

    def __setstate__(self, state):
        raise CheckpointFormatError(f"invalid pickle: BUILD applied to storage type {self.name}")

    def __repr__(self):
        return f"torch.{self.name}"


# Storage class name -> element dtype as stored. bfloat16 is read as uint16 and widened later.
_STORAGE_FILE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
    "UntypedStorage": np.uint8,
}
_STORAGE_TYPES = {name: _StorageType(name, dtype) for name, dtype in _STORAGE_FILE_DTYPES.items()}


class _StorageRef:
    """A persistent id of a storage: its type, key and element count (plus a legacy view slice)."""

    __slots__ = ("storage_type", "key", "numel", "view_offset", "view_numel")

    def __init__(self, storage_type, key, numel, view_offset=None, view_numel=None):
        self.storage_type = storage_type
        self.key = key
        self.numel = numel
        self.view_offset = view_offset
        self.view_numel = view_numel

    def __setstate__(self, state):
        raise CheckpointFormatError("invalid pickle: BUILD applied to a storage")


class _TensorRecord:
    """A tensor to build once its storage is read: offset, size and stride in elements."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride

    def __setstate__(self, state):
        raise CheckpointFormatError("invalid pickle: BUILD applied to a tensor")


def _as_int_tuple(value, what):
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise CheckpointFormatError(f"invalid tensor {what} {value!r}: expected a tuple of non-negative ints")
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
    """Record a tensor, with the arguments of torch._utils._rebuild_tensor_v2 (and the older _rebuild_tensor)."""
    if not isinstance(storage, _StorageRef):
        raise CheckpointFormatError(f"invalid tensor: its storage is a {type(storage).__name__}, not a storage id")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise CheckpointFormatError(f"invalid tensor storage offset {storage_offset!r}")
    size = _as_int_tuple(size, "size")
    stride = _as_int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointFormatError(f"invalid tensor: size {size} and stride {stride} differ in length")
    return _TensorRecord(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused_args):
    """Unwrap an nn.Parameter: the state we keep is its tensor."""
    return data


def _torch_size(values=()):
    return tuple(values)


def _safe_codecs_encode(text, encoding="latin1"):
    """Rebuild a bytes object as protocol-2 pickles store it (`_codecs.encode(str, 'latin1')`)."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise CheckpointFormatError(f"invalid pickle: _codecs.encode called with encoding {encoding!r}")
    return text.encode("latin1")


_CONTAINER_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _safe_codecs_encode,
}

_TORCH_GLOBALS = {
    **_CONTAINER_GLOBALS,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _torch_size,
    **{("torch", name): storage_type for name, storage_type in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose find_class returns only allow-listed builders."""

    def __init__(self, file, path, allowed_globals, persistent_load=None, encoding="utf-8"):
        super().__init__(file, encoding=encoding)
        self._path = path
        self._allowed_globals = allowed_globals
        self._persistent_load = persistent_load

    def find_class(self, module, name):
        # Protocol 2 pickles use Python 2 names (__builtin__.set); map them as pickle's own find_class
        # does. The mapped name must still be on the allow-list.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return self._allowed_globals[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(self._path, module, name) from None

    def persistent_load(self, pid):
        if self._persistent_load is None:
            raise CheckpointFormatError(f"{self._path}: unexpected persistent id {pid!r} in this pickle")
        return self._persistent_load(pid)


def _unpickle(file, path, allowed_globals, persistent_load=None, encoding="utf-8"):
    """Run the restricted unpickler and turn low-level failures into errors naming the file."""
    unpickler = _RestrictedUnpickler(file, path, allowed_globals, persistent_load, encoding)
    try:
        return unpickler.load()
    except UnsafeCheckpointError:
        raise
    except CheckpointFormatError as error:
        if str(path) in str(error):
            raise
        raise CheckpointFormatError(f"{path}: {error}") from error
    except EOFError as error:
        raise CheckpointFormatError(f"{path} is truncated: the pickle ends early ({error or 'EOF'})") from error
    except (pickle.UnpicklingError, TypeError, ValueError, AttributeError, KeyError, IndexError,
            MemoryError, RecursionError, struct.error, UnicodeDecodeError) as error:
        raise CheckpointFormatError(f"{path} is corrupt or not a checkpoint: unpickling failed with {error!r}") from error


# ----------------------------------------------------------------------------------------------
# Materialization: storages -> NumPy arrays.


def _storage_id_parser(path, refs_by_key):
    """Return a persistent_load that parses ('storage', type, key, location, numel[, view]) ids."""

    def persistent_load(pid):
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise CheckpointFormatError(f"{path}: invalid persistent id {pid!r}, expected a storage id")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"{path}: invalid storage type {storage_type!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointFormatError(f"{path}: invalid storage id {pid!r}")
        root = refs_by_key.setdefault(key, _StorageRef(storage_type, key, numel))
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return root
        return _parse_legacy_view(path, root, view)

    return persistent_load


def _parse_legacy_view(path, root, view):
    """Return a storage ref for a legacy storage view (view_key, offset, numel) into a root storage."""
    if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])):
        raise CheckpointFormatError(f"{path}: invalid storage view {view!r}")
    _view_key, offset, numel = view
    if offset < 0 or numel < 0 or offset + numel > root.numel:
        raise CheckpointFormatError(f"{path}: storage view {view!r} lies outside storage {root.key} ({root.numel} elements)")
    return _StorageRef(root.storage_type, root.key, numel, view_offset=offset, view_numel=numel)


def _storage_array(path, raw_bytes, ref, byteorder):
    """Interpret raw storage bytes as a 1-D array of `ref.numel` elements."""
    dtype = ref.storage_type.file_dtype.newbyteorder("<" if byteorder == "little" else ">")
    needed_bytes = ref.numel * dtype.itemsize
    if len(raw_bytes) < needed_bytes:
        raise CheckpointFormatError(
            f"{path} is truncated: storage {ref.key} has {len(raw_bytes)} bytes, expected {needed_bytes}"
        )
    return np.frombuffer(raw_bytes, dtype=dtype, count=ref.numel)


def _tensor_array(path, record, storages):
    """Build an owned, C-contiguous array for one tensor record, checking every index is in bounds."""
    ref = record.storage
    if ref.key not in storages:
        raise CheckpointFormatError(f"{path}: storage {ref.key} is referenced but not stored in the file")
    storage = storages[ref.key]
    if ref.view_offset is not None:
        storage = storage[ref.view_offset : ref.view_offset + ref.view_numel]

    if 0 in record.size:
        values = np.zeros(record.size, dtype=storage.dtype)
    else:
        last_index = record.offset + sum((n - 1) * s for n, s in zip(record.size, record.stride))
        if last_index >= storage.size:
            raise CheckpointFormatError(
                f"{path}: tensor of size {record.size} stride {record.stride} offset {record.offset} "
                f"reads past the end of storage {ref.key} ({storage.size} elements)"
            )
        strides_bytes = tuple(s * storage.itemsize for s in record.stride)
        values = np.lib.stride_tricks.as_strided(
            storage[record.offset :], shape=record.size, strides=strides_bytes, writeable=False
        )
    values = np.array(values, dtype=values.dtype.newbyteorder("="), order="C", copy=True)
    if ref.storage_type.name == "BFloat16Storage":
        # NumPy has no bfloat16. A bfloat16 value is the upper half of a float32, so widen it.
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return values


def _materialize(obj, build_tensor, visited=None):
    """Replace every tensor record inside dicts, lists and tuples by its array (in place where possible)."""
    if isinstance(obj, _TensorRecord):
        return build_tensor(obj)
    if isinstance(obj, _StorageRef):
        raise CheckpointFormatError("a bare storage outside a tensor is not supported")
    visited = set() if visited is None else visited
    if id(obj) in visited:
        return obj
    if isinstance(obj, dict):
        visited.add(id(obj))
        for key in list(obj.keys()):
            obj[key] = _materialize(obj[key], build_tensor, visited)
    elif isinstance(obj, list):
        visited.add(id(obj))
        for index, item in enumerate(obj):
            obj[index] = _materialize(item, build_tensor, visited)
    elif isinstance(obj, tuple):
        return tuple(_materialize(item, build_tensor, visited) for item in obj)
    return obj


# ----------------------------------------------------------------------------------------------
# torch file formats.


def _find_zip_prefix(path, names):
    """Return the archive folder ("<name>/") that contains data.pkl."""
    pickles = [name for name in names if name.endswith("data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointFormatError(
            f"{path}: expected exactly one <archive>/data.pkl in the torch zip file, found {pickles or 'none'}"
        )
    return pickles[0][: -len("data.pkl")]


def _load_torch_zip(path):
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise CheckpointFormatError(f"{path} is truncated or corrupt: not a readable zip archive ({error})") from error
    with archive:
        names = archive.namelist()
        prefix = _find_zip_prefix(path, names)
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointFormatError(f"{path}: invalid byteorder record {byteorder!r}")

        refs_by_key = {}
        with archive.open(prefix + "data.pkl") as pickle_file:
            obj = _unpickle(pickle_file, path, _TORCH_GLOBALS, _storage_id_parser(path, refs_by_key))

        storages = {}
        for key, ref in refs_by_key.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise CheckpointFormatError(f"{path}: storage {key} is referenced but {member} is missing")
            storages[key] = _storage_array(path, archive.read(member), ref, byteorder)
    return _materialize(obj, lambda record: _tensor_array(path, record, storages))


def _read_exact(file, num_bytes, path, what):
    remaining_bytes = os.fstat(file.fileno()).st_size - file.tell()
    if num_bytes > remaining_bytes:
        # Checked before reading, so a corrupt size cannot make read() allocate a huge buffer.
        raise CheckpointFormatError(
            f"{path} is truncated: {what} needs {num_bytes} bytes, only {remaining_bytes} remain"
        )
    data = file.read(num_bytes)
    if len(data) != num_bytes:
        raise CheckpointFormatError(f"{path} is truncated: {what} needs {num_bytes} bytes, found {len(data)}")
    return data


def _load_torch_legacy(path):
    """Read the legacy format: magic, protocol, sys_info, object pickle, key list, then the storages."""
    with open(path, "rb") as file:
        magic = _unpickle(file, path, {})
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointFormatError(f"{path}: not a torch file (first pickle is {magic!r}, not the torch magic number)")
        protocol = _unpickle(file, path, {})
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise CheckpointFormatError(f"{path}: unsupported legacy torch protocol {protocol!r}")
        sys_info = _unpickle(file, path, {})
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            # NOTE: no big-endian legacy file was available to check how its storages are laid out.
            raise CheckpointFormatError(f"{path}: legacy torch files saved on big-endian machines are not supported")

        refs_by_key = {}
        obj = _unpickle(file, path, _TORCH_GLOBALS, _storage_id_parser(path, refs_by_key))
        storage_keys = _unpickle(file, path, {})
        if not isinstance(storage_keys, list) or not all(isinstance(key, str) for key in storage_keys):
            raise CheckpointFormatError(f"{path}: invalid storage key list {storage_keys!r}")

        storages = {}
        for key in storage_keys:
            if key not in refs_by_key:
                raise CheckpointFormatError(f"{path}: storage {key} is stored but no tensor references it")
            ref = refs_by_key[key]
            (numel,) = struct.unpack("<q", _read_exact(file, 8, path, f"the size of storage {key}"))
            if numel != ref.numel:
                raise CheckpointFormatError(f"{path}: storage {key} holds {numel} elements, its id says {ref.numel}")
            raw = _read_exact(file, numel * ref.storage_type.file_dtype.itemsize, path, f"storage {key}")
            storages[key] = _storage_array(path, raw, ref, "little")
    return _materialize(obj, lambda record: _tensor_array(path, record, storages))


def detect_file_format(path):
    """Return "torch_zip", "torch_legacy", "npy" or "paddle" from the content of a checkpoint file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as file:
        head = file.read(8)
    if head.startswith(_ZIP_SIGNATURE):
        return "torch_zip"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if not head.startswith(_PICKLE_PROTO_OPCODE):
        raise CheckpointFormatError(
            f"{path} is not a checkpoint: it starts with {head!r}, expected a zip archive, a pickle or a .npy file"
        )
    # A legacy torch file starts with a pickled magic number. Paddle files start with a dict,
    # whose first NumPy global the empty allow-list rejects before anything else is read.
    with open(path, "rb") as file:
        try:
            first = _unpickle(file, path, {})
        except CheckpointFormatError:
            return "paddle"
    return "torch_legacy" if first == LEGACY_MAGIC_NUMBER else "paddle"


def load_torch_file(path):
    """Load a `torch.save` file and return its object with every tensor as a NumPy array.

    Handles the zip format (torch >= 1.6 default) and the legacy format. Parameters become
    plain arrays; storage sharing between tensors is not preserved (each array owns its data).
    Raises UnsafeCheckpointError when the pickle names anything but tensors and containers,
    and CheckpointFormatError when the file is truncated or not a torch file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as file:
        head = file.read(4)
    if head.startswith(_ZIP_SIGNATURE):
        return _load_torch_zip(path)
    if head.startswith(_PICKLE_PROTO_OPCODE):
        return _load_torch_legacy(path)
    if len(head) < 4:
        raise CheckpointFormatError(f"{path} is truncated: only {len(head)} bytes")
    raise CheckpointFormatError(
        f"{path} is not a torch checkpoint: it starts with {head!r}, expected a zip archive or a pickle "
        "(the tar format of torch < 0.4 is not supported)"
    )


# ----------------------------------------------------------------------------------------------
# NumPy reconstruction (paddle.save files and pickled .npy files).


def _safe_dtype(spec, align=False, copy=False):
    """Build a NumPy dtype from its pickled type string (any other spec, such as a class, is rejected)."""
    if not isinstance(spec, str):
        raise CheckpointFormatError(f"invalid pickle: dtype spec {spec!r} is not a type name")
    return np.dtype(spec)


def _safe_reconstruct(subtype, shape, dtype):
    """Start an ndarray unpickle (numpy's _reconstruct); only plain ndarray is allowed as the class."""
    if subtype is not np.ndarray:
        raise CheckpointFormatError(f"invalid pickle: array subclass {subtype!r} is not allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _safe_scalar(dtype, value=None):
    if not isinstance(dtype, np.dtype):
        raise CheckpointFormatError(f"invalid pickle: scalar dtype {dtype!r}")
    if dtype.hasobject:
        return value
    if not isinstance(value, bytes) or len(value) != dtype.itemsize:
        raise CheckpointFormatError(f"invalid pickle: scalar of {dtype} needs {dtype.itemsize} bytes")
    return np.frombuffer(value, dtype=dtype, count=1)[0]


def _safe_frombuffer(buffer, dtype, shape, order):
    """Rebuild an array pickled with protocol 5 in-band buffers."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise CheckpointFormatError(f"invalid pickle: buffer array dtype {dtype!r}")
    flat = np.frombuffer(bytes(buffer), dtype=dtype)
    return flat.reshape(shape, order=order).copy()


_NUMPY_GLOBALS = {
    **_CONTAINER_GLOBALS,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _NUMPY_GLOBALS[(_module, "_reconstruct")] = _safe_reconstruct
    _NUMPY_GLOBALS[(_module, "scalar")] = _safe_scalar
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _NUMPY_GLOBALS[(_module, "_frombuffer")] = _safe_frombuffer


def _paddle_tensor_tuple(items):
    """Unwrap a Paddle tensor, which paddle.save pickles as `tuple(((name, ndarray),))`."""
    items = tuple(items)
    if len(items) == 2 and isinstance(items[0], str) and isinstance(items[1], np.ndarray):
        return items[1]
    return items


def _paddle_dense_tensor(expression, namespace=None):
    """Unwrap a Paddle DenseTensor, which paddle.save pickles as `eval('data', {'data': ndarray})`.

    Nothing is evaluated: only that exact expression is accepted.
    """
    if expression != "data" or not isinstance(namespace, dict) or not isinstance(namespace.get("data"), np.ndarray):
        raise CheckpointFormatError(f"invalid pickle: eval({expression!r}) is not a Paddle tensor record")
    return namespace["data"]


_PADDLE_GLOBALS = {
    **_NUMPY_GLOBALS,
    ("builtins", "tuple"): _paddle_tensor_tuple,
    ("builtins", "eval"): _paddle_dense_tensor,
}

PADDLE_NAME_TABLE_KEY = "StructuredToParameterName@@"
PADDLE_BIG_PARAM_KEY = "UnpackBigParamInfor@@"


def _join_big_params(state, path):
    """Reassemble arrays that paddle.save split into slices (pickle protocols 2 and 3, > 1 GiB)."""
    info = state.pop(PADDLE_BIG_PARAM_KEY)
    for key, entry in info.items():
        try:
            parts = [state.pop(part) for part in entry["slices"]]
            state[key] = np.concatenate(parts).reshape(entry["OriginShape"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointFormatError(f"{path}: cannot reassemble split parameter {key!r}: {error!r}") from error
    return state


def load_paddle_file(path):
    """Load a `paddle.save` file (.pdparams, .pdopt) as NumPy arrays inside plain containers.

    Paddle tensors become arrays; split parameters are joined. The parameter name table
    ("StructuredToParameterName@@") is left in place for callers that need it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as file:
        obj = _unpickle(file, path, _PADDLE_GLOBALS, encoding="latin1")
    if isinstance(obj, dict) and PADDLE_BIG_PARAM_KEY in obj:
        obj = _join_big_params(obj, path)
    return obj


def load_pickled_npy(path):
    """Load a `.npy` file that contains a pickled object (np.save of a dict) with the restricted unpickler.

    Returns the stored object itself (the `[()]` item of the 0-d object array).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as file:
        try:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, _fortran_order, dtype = np.lib.format.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, _fortran_order, dtype = np.lib.format.read_array_header_2_0(file)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as error:
            raise CheckpointFormatError(f"{path} is not a valid .npy file: {error}") from error
        if not dtype.hasobject:
            file.seek(0)
            return np.load(file, allow_pickle=False)
        array = _unpickle(file, path, _NUMPY_GLOBALS, encoding="latin1")
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise CheckpointFormatError(f"{path}: pickled payload is not the {shape} object array its header declares")
    return array[()] if array.shape == () else array

