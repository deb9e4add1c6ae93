"""Read PyTorch, Paddle and pickled-NumPy checkpoint files without torch and without running their code.

All three formats are pickles. A pickle may name any importable callable, and a plain
`pickle.load` would import and call it. So every reader here uses a restricted unpickler:
- `find_class` resolves only an explicit allow-list of names (tensor rebuild functions, storage
  types, NumPy array reconstruction and plain containers) to wrappers defined in this module.
  Any other name raises `UnsafeCheckpointError` before anything is imported.
- BUILD (which would call `__setstate__` or set attributes) applies only to this module's
  dtype and array records and to OrderedDict, whose attributes are dropped.
- NumPy arrays are rebuilt from their raw bytes, only for numeric and bool dtypes, after the
  byte count is checked against the shape. Structured and object dtypes are rejected, except
  the 0-d object array that wraps a pickled object in a `.npy` file.
- Every length field is checked against the bytes left in the file before anything is
  allocated, so a small file cannot make the reader allocate much more memory than its size.

Public entry points:
- `load_torch_file(path)`: a `torch.save` file (zip or legacy format). Tensors become NumPy arrays.
- `load_paddle_file(path)`: a `paddle.save` file (.pdparams / .pdopt).
- `load_pickled_npy(path)`: a `.npy` file holding a pickled object (the MTCNN weight files).
"""

import _compat_pickle
import collections
import math
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"
_PICKLE_PROTO_OPCODE = b"\x80"
_NPY_MAGIC = b"\x93NUMPY"

# Limits on what a file may declare. Real checkpoints stay far below them.
_MAX_NDIM = 32
_MAX_NUMEL = 2**48
_MAX_NESTING_DEPTH = 100
# A compressed zip member may expand to at most this ratio of its compressed size (plus the
# slack below). torch.save writes members uncompressed, so only re-zipped files compress at all.
_MAX_COMPRESSION_RATIO = 32
_COMPRESSION_SLACK_BYTES = 1 << 20
# dtype kinds an array may have: bool, signed and unsigned integers, floats, complex numbers.
_NUMERIC_KINDS = "biufc"


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


def _check_shape(shape, what):
    """Return `shape` as a tuple of ints after checking its rank and element count."""
    if not isinstance(shape, (tuple, list)) or not all(type(n) is int and n >= 0 for n in shape):
        raise CheckpointFormatError(f"invalid {what} {shape!r}: expected a tuple of non-negative ints")
    if len(shape) > _MAX_NDIM:
        raise CheckpointFormatError(f"invalid {what}: {len(shape)} dimensions, at most {_MAX_NDIM} are supported")
    nonzero_numel = math.prod(n for n in shape if n > 0)
    if nonzero_numel > _MAX_NUMEL:
        raise CheckpointFormatError(f"invalid {what} {tuple(shape)}: more than {_MAX_NUMEL} elements")
    return tuple(shape)


def _check_numeric_dtype(dtype, what):
    """Raise unless `dtype` is a plain bool, integer, float or complex dtype."""
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise CheckpointFormatError(
            f"{what} has dtype {dtype}, which is not supported: only bool, integer, float and complex arrays can be read"
        )


# ----------------------------------------------------------------------------------------------
# The restricted unpickler.


class _AllowedCallable:
    """An allow-listed global as returned by find_class: callable, with no state a pickle can change."""

    __slots__ = ("qualified_name", "_function")

    def __init__(self, qualified_name, function):
        self.qualified_name = qualified_name
        self._function = function

    def __call__(self, *args):
        return self._function(*args)

    def __repr__(self):
        return self.qualified_name


class _BoundedReader:
    """A file view that raises EOFError on a read past `size_bytes`.

    Pickle length fields are read through it, so a forged length cannot make the unpickler
    request (and allocate) more bytes than the file contains.
    """

    def __init__(self, file, size_bytes):
        self._file = file
        self.size_bytes = size_bytes
        self.remaining_bytes = size_bytes

    def read(self, num_bytes=-1):
        if num_bytes is None or num_bytes < 0:
            num_bytes = self.remaining_bytes
        if num_bytes > self.remaining_bytes:
            raise EOFError(f"a record needs {num_bytes} bytes, only {self.remaining_bytes} remain")
        data = self._file.read(num_bytes)
        self.remaining_bytes -= len(data)
        return data

    def readline(self):
        line = self._file.readline(self.remaining_bytes)
        self.remaining_bytes -= len(line)
        return line


def _reject_opcode(name):
    def load(unpickler):
        raise CheckpointFormatError(f"invalid pickle: opcode {name} is not used by torch, Paddle or NumPy files")

    return load


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with an allow-list for globals, checked BUILD and checked lengths.

    The pure-Python class is used because its opcode table can be overridden: BUILD, BYTEARRAY8
    and the opcodes no supported writer emits are replaced below.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path, allowed_globals, persistent_load=None, encoding="utf-8"):
        super().__init__(file, encoding=encoding)
        self._reader = file
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
            raise CheckpointFormatError(f"unexpected persistent id {pid!r} in this pickle")
        return self._persistent_load(pid)

    def _load_build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, (_DtypeRecord, _ArrayRecord)):
            target.apply_state(state)
        elif type(target) is collections.OrderedDict and isinstance(state, dict):
            pass  # instance attributes such as torch's state_dict._metadata; only the items are kept
        else:
            raise CheckpointFormatError(
                f"invalid pickle: BUILD (set object state) on a {type(target).__name__} is not allowed"
            )

    def _load_bytearray8(self):
        # The stock handler allocates the bytearray before reading it. The bytes may sit in a frame
        # that was already read, so the bound is the whole pickle's size.
        (num_bytes,) = struct.unpack("<Q", self.read(8))
        if num_bytes > self._reader.size_bytes:
            raise EOFError(f"a bytearray needs {num_bytes} bytes, the pickle has {self._reader.size_bytes}")
        self.append(bytearray(self.read(num_bytes)))

    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    for _opcode in ("INST", "OBJ", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER"):
        dispatch[getattr(pickle, _opcode)[0]] = _reject_opcode(_opcode)


def _remaining_file_bytes(file):
    return os.fstat(file.fileno()).st_size - file.tell()


def _unpickle(file, path, allowed_globals, persistent_load=None, encoding="utf-8", size_bytes=None):
    """Run the restricted unpickler and turn every failure into an error naming the file.

    `size_bytes` bounds what the pickle may read; it defaults to the rest of the (real) file.
    """
    try:
        if size_bytes is None:
            size_bytes = _remaining_file_bytes(file)
        reader = _BoundedReader(file, size_bytes)
        return _RestrictedUnpickler(reader, path, allowed_globals, persistent_load, encoding).load()
    except UnsafeCheckpointError:
        raise
    except CheckpointFormatError as error:
        if str(path) in str(error):
            raise
        raise CheckpointFormatError(f"{path}: {error}") from error
    except EOFError as error:
        raise CheckpointFormatError(f"{path} is truncated: the pickle ends early ({error or 'EOF'})") from error
    except MemoryError as error:
        raise CheckpointFormatError(f"{path}: not enough memory to unpickle it ({error!r})") from error
    except (pickle.UnpicklingError, TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError,
            RecursionError, struct.error, zipfile.BadZipFile, zlib.error, OSError) as error:
        raise CheckpointFormatError(f"{path} is corrupt or not a checkpoint: unpickling failed with {error!r}") from error


# ----------------------------------------------------------------------------------------------
# Builders for plain containers and bytes.


def _safe_codecs_encode(text, encoding="latin1"):
    """Rebuild a bytes object as protocol-2 pickles store it (`_codecs.encode(str, 'latin1')`)."""
    if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower().replace("-", "") != "latin1":
        raise CheckpointFormatError(f"invalid pickle: _codecs.encode called with encoding {encoding!r}")
    return text.encode("latin1")


def _safe_bytearray(source=b"", encoding=None):
    """Rebuild a bytearray from pickled bytes (or a latin1 str); a length argument is rejected."""
    if isinstance(source, str) and encoding is not None:
        return bytearray(_safe_codecs_encode(source, encoding))
    if isinstance(source, (bytes, bytearray)) and encoding is None:
        return bytearray(source)
    raise CheckpointFormatError(f"invalid pickle: bytearray() needs bytes, got {type(source).__name__} {source!r:.40}")


def _allowed(module, name, function):
    return (module, name), _AllowedCallable(f"{module}.{name}", function)


_CONTAINER_GLOBALS = dict(
    (
        _allowed("collections", "OrderedDict", collections.OrderedDict),
        _allowed("builtins", "dict", dict),
        _allowed("builtins", "list", list),
        _allowed("builtins", "tuple", tuple),
        _allowed("builtins", "set", set),
        _allowed("builtins", "frozenset", frozenset),
        _allowed("builtins", "bytearray", _safe_bytearray),
        _allowed("builtins", "complex", complex),
        _allowed("_codecs", "encode", _safe_codecs_encode),
    )
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

    @property
    def num_bytes(self):
        return self.numel * self.storage_type.file_dtype.itemsize


class _TensorRecord:
    """A tensor to build once its storage is read: offset, size and stride in elements."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
    """Record a tensor, with the arguments of torch._utils._rebuild_tensor_v2 (and the older _rebuild_tensor)."""
    if not isinstance(storage, _StorageRef):
        raise CheckpointFormatError(f"invalid tensor: its storage is a {type(storage).__name__}, not a storage id")
    if type(storage_offset) is not int or storage_offset < 0:
        raise CheckpointFormatError(f"invalid tensor storage offset {storage_offset!r}")
    size = _check_shape(size, "tensor size")
    if not isinstance(stride, (tuple, list)) or not all(type(s) is int and s >= 0 for s in stride):
        raise CheckpointFormatError(f"invalid tensor stride {stride!r}: expected a tuple of non-negative ints")
    if len(size) != len(stride):
        raise CheckpointFormatError(f"invalid tensor: size {size} and stride {tuple(stride)} differ in length")
    return _TensorRecord(storage, storage_offset, size, tuple(stride))


def _rebuild_parameter(data, *unused_args):
    """Unwrap an nn.Parameter: the state we keep is its tensor."""
    if not isinstance(data, _TensorRecord):
        raise CheckpointFormatError(f"invalid parameter: it wraps a value of type {type(data).__name__}, not a tensor")
    return data


def _torch_size(values=()):
    return _check_shape(values, "torch.Size")


_TORCH_GLOBALS = dict(
    (
        *_CONTAINER_GLOBALS.items(),
        _allowed("torch._utils", "_rebuild_tensor_v2", _rebuild_tensor),
        _allowed("torch._utils", "_rebuild_tensor", _rebuild_tensor),
        _allowed("torch._utils", "_rebuild_parameter", _rebuild_parameter),
        _allowed("torch._utils", "_rebuild_parameter_with_state", _rebuild_parameter),
        _allowed("torch", "Size", _torch_size),
        *((("torch", name), storage_type) for name, storage_type in _STORAGE_TYPES.items()),
    )
)


# ----------------------------------------------------------------------------------------------
# Materialization: records -> NumPy arrays.


def _storage_id_parser(path, refs_by_key):
    """Return a persistent_load that parses ('storage', type, key, location, numel[, view]) ids."""

    def persistent_load(pid):
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise CheckpointFormatError(f"{path}: invalid persistent id {pid!r}, expected a storage id")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"{path}: invalid storage type {storage_type!r}")
        if not isinstance(key, str) or type(numel) is not int or not 0 <= numel <= _MAX_NUMEL:
            raise CheckpointFormatError(f"{path}: invalid storage id {pid!r}")
        root = refs_by_key.setdefault(key, _StorageRef(storage_type, key, numel))
        if root.storage_type is not storage_type or root.numel != numel:
            raise CheckpointFormatError(
                f"{path}: storage {key} is declared twice, as {root.numel} x {root.storage_type} "
                f"and as {numel} x {storage_type}"
            )
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return root
        return _parse_legacy_view(path, root, view)

    return persistent_load


def _parse_legacy_view(path, root, view):
    """Return a storage ref for a legacy storage view (view_key, offset, numel) into a root storage."""
    if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int for v in view[1:])):
        raise CheckpointFormatError(f"{path}: invalid storage view {view!r}")
    _view_key, offset, numel = view
    if offset < 0 or numel < 0 or offset + numel > root.numel:
        raise CheckpointFormatError(f"{path}: storage view {view!r} lies outside storage {root.key} ({root.numel} elements)")
    return _StorageRef(root.storage_type, root.key, numel, view_offset=offset, view_numel=numel)


def _storage_array(path, raw_bytes, ref, byteorder):
    """Interpret raw storage bytes as a 1-D array of `ref.numel` elements."""
    dtype = ref.storage_type.file_dtype.newbyteorder("<" if byteorder == "little" else ">")
    if len(raw_bytes) < ref.num_bytes:
        raise CheckpointFormatError(
            f"{path} is truncated: storage {ref.key} has {len(raw_bytes)} bytes, expected {ref.num_bytes}"
        )
    return np.frombuffer(raw_bytes, dtype=dtype, count=ref.numel)


def _tensor_array(path, record, storages):
    """Build an owned, C-contiguous array for one tensor record, checking every index is in bounds.

    A tensor may have no more elements than its storage, so the output is at most the size of
    the storage (twice that for bfloat16, which is widened to float32).
    """
    ref = record.storage
    if ref.key not in storages:
        raise CheckpointFormatError(f"{path}: storage {ref.key} is referenced but not stored in the file")
    storage = storages[ref.key]
    if ref.view_offset is not None:
        storage = storage[ref.view_offset : ref.view_offset + ref.view_numel]

    numel = math.prod(record.size)
    if numel == 0:
        values = np.zeros(record.size, dtype=storage.dtype)
    else:
        last_index = record.offset + sum((n - 1) * s for n, s in zip(record.size, record.stride))
        if last_index >= storage.size:
            raise CheckpointFormatError(
                f"{path}: tensor of size {record.size} stride {record.stride} offset {record.offset} "
                f"reads past the end of storage {ref.key} ({storage.size} elements)"
            )
        if numel > storage.size:
            # NOTE: torch can save expanded views (stride 0) whose elements repeat. They are rejected
            # here, so that a few stored bytes cannot expand into a huge array.
            raise CheckpointFormatError(
                f"{path}: tensor of size {record.size} stride {record.stride} has {numel} elements, more than "
                f"the {storage.size} of storage {ref.key}; tensors that repeat storage elements are not supported"
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


_PLAIN_LEAF_TYPES = (str, bytes, bytearray, int, float, complex, bool, type(None), np.generic, np.dtype)


class _Materializer:
    """Replace the records inside an unpickled object by NumPy arrays, and reject anything else.

    Only dicts, OrderedDicts, lists, tuples, sets and plain scalars may remain. Nesting is
    limited to `_MAX_NESTING_DEPTH` levels and reference cycles are rejected, so callers can
    walk the result recursively.
    """

    def __init__(self, path, build_tensor=None):
        self._path = path
        self._build_tensor = build_tensor
        self._done = {}  # id(container) -> materialized container (shared references stay shared)
        self._open = set()  # ids of the containers on the current path, to find cycles

    def run(self, obj):
        try:
            return self._resolve(obj, "the top-level object", 0)
        except CheckpointFormatError as error:
            if self._path in str(error):
                raise
            raise CheckpointFormatError(f"{self._path}: {error}") from error
        except (MemoryError, ValueError, OverflowError) as error:
            raise CheckpointFormatError(f"{self._path}: cannot build its arrays: {error!r}") from error

    def _resolve(self, obj, where, depth):
        if isinstance(obj, _TensorRecord) and self._build_tensor is not None:
            return self._build_tensor(obj)
        if isinstance(obj, _ArrayRecord):
            return obj.numeric_array(where)
        if isinstance(obj, _DtypeRecord):
            return obj.dtype
        if isinstance(obj, _PLAIN_LEAF_TYPES):
            return obj
        if type(obj) not in (dict, collections.OrderedDict, list, tuple, set, frozenset):
            raise CheckpointFormatError(f"{where} has type {type(obj).__name__}, which is not allowed in a checkpoint")
        if depth >= _MAX_NESTING_DEPTH:
            raise CheckpointFormatError(f"{where} is nested more than {_MAX_NESTING_DEPTH} levels deep")
        if id(obj) in self._done:
            return self._done[id(obj)]
        if id(obj) in self._open:
            raise CheckpointFormatError(f"{where} contains itself (a reference cycle)")
        self._open.add(id(obj))
        result = self._resolve_container(obj, where, depth + 1)
        self._open.discard(id(obj))
        self._done[id(obj)] = result
        return result

    def _resolve_container(self, obj, where, depth):
        if isinstance(obj, dict):
            for key in list(obj):
                self._check_plain(key, f"a key of {where}")
                obj[key] = self._resolve(obj[key], f"entry {key!r}", depth)
            return obj
        if isinstance(obj, list):
            for index, item in enumerate(obj):
                obj[index] = self._resolve(item, f"item {index} of {where}", depth)
            return obj
        if isinstance(obj, tuple):
            return tuple(self._resolve(item, f"item {index} of {where}", depth) for index, item in enumerate(obj))
        for item in obj:  # set or frozenset: its items are hashable, so they must be plain values
            self._check_plain(item, f"an item of {where}")
        return obj

    def _check_plain(self, value, where):
        if isinstance(value, tuple):
            for item in value:
                self._check_plain(item, where)
        elif not isinstance(value, _PLAIN_LEAF_TYPES):
            raise CheckpointFormatError(f"{where} has type {type(value).__name__}, expected a string or number")


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


def _check_zip_members(path, infos):
    """Reject duplicate member names and compressed members that expand far beyond their size."""
    counts = collections.Counter(info.filename for info in infos)
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise CheckpointFormatError(f"{path}: the zip archive contains duplicate members {duplicates[:5]}")
    for info in infos:
        max_bytes = _MAX_COMPRESSION_RATIO * info.compress_size + _COMPRESSION_SLACK_BYTES
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > max_bytes:
            raise CheckpointFormatError(
                f"{path}: zip member {info.filename} expands from {info.compress_size} to {info.file_size} bytes; "
                "torch.save writes members uncompressed, so the file was not written by torch"
            )


def _read_zip_storage(path, archive, info, ref, byteorder):
    """Read one storage member after checking its size against the element count of its id."""
    if info.file_size < ref.num_bytes:
        raise CheckpointFormatError(
            f"{path} is truncated: storage {ref.key} has {info.file_size} bytes, expected {ref.num_bytes}"
        )
    with archive.open(info) as member:
        raw_bytes = member.read(ref.num_bytes)
    return _storage_array(path, raw_bytes, ref, byteorder)


def _read_torch_zip(path, archive):
    """Return (unpickled object, {storage key: 1-D array}) of an open torch zip archive."""
    infos = archive.infolist()
    _check_zip_members(path, infos)
    infos_by_name = {info.filename: info for info in infos}
    prefix = _find_zip_prefix(path, list(infos_by_name))
    byteorder = "little"
    if prefix + "byteorder" in infos_by_name:
        with archive.open(infos_by_name[prefix + "byteorder"]) as member:
            byteorder = member.read(16).decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointFormatError(f"{path}: invalid byteorder record {byteorder!r}")

    refs_by_key = {}
    pickle_info = infos_by_name[prefix + "data.pkl"]
    with archive.open(pickle_info) as pickle_file:
        obj = _unpickle(
            pickle_file, path, _TORCH_GLOBALS, _storage_id_parser(path, refs_by_key), size_bytes=pickle_info.file_size
        )

    storages = {}
    for key, ref in refs_by_key.items():
        member = f"{prefix}data/{key}"
        if member not in infos_by_name:
            raise CheckpointFormatError(f"{path}: storage {key} is referenced but {member} is missing")
        storages[key] = _read_zip_storage(path, archive, infos_by_name[member], ref, byteorder)
    return obj, storages


def _load_torch_zip(path):
    try:
        with zipfile.ZipFile(path) as archive:
            obj, storages = _read_torch_zip(path, archive)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, OSError) as error:
        # RuntimeError covers encrypted members and NotImplementedError (unknown compression).
        raise CheckpointFormatError(f"{path} is truncated or corrupt: not a readable zip archive ({error})") from error
    return _Materializer(path, lambda record: _tensor_array(path, record, storages)).run(obj)


def _read_exact(file, num_bytes, path, what):
    remaining_bytes = _remaining_file_bytes(file)
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
                raise CheckpointFormatError(f"{path}: storage {key} contains {numel} elements, but its persistent id declares {ref.numel}")
            raw = _read_exact(file, ref.num_bytes, path, f"storage {key}")
            storages[key] = _storage_array(path, raw, ref, "little")
    return _Materializer(path, lambda record: _tensor_array(path, record, storages)).run(obj)


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
    and CheckpointFormatError when the file is truncated, corrupt or not a torch file.
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
# NumPy reconstruction (paddle.save files and pickled .npy files). NumPy pickles a dtype as
# `dtype(spec, align, copy)` + BUILD(state) and an array as `_reconstruct(ndarray, (0,), b'b')`
# + BUILD((version, shape, dtype, is_fortran, raw bytes)). The calls below return records, and
# BUILD fills a record only after checking the state, so NumPy's own __setstate__ never runs.


class _DtypeRecord:
    """A pickled NumPy dtype: np.dtype(spec) with the byte order that BUILD supplies."""

    __slots__ = ("dtype", "_has_state")

    def __init__(self, dtype):
        self.dtype = dtype
        self._has_state = False

    def apply_state(self, state):
        """Apply a dtype state (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])."""
        if self._has_state:
            raise CheckpointFormatError(f"invalid pickle: BUILD applied twice to dtype {self.dtype}")
        if not isinstance(state, tuple) or (state[:1], len(state)) not in (((3,), 8), ((4,), 9)):
            raise CheckpointFormatError(f"invalid pickle: unsupported state {state!r} for dtype {self.dtype}")
        byteorder, subarray, names, fields, elsize, alignment = state[1:7]
        metadata = state[8] if len(state) == 9 else None
        if (subarray, names, fields, metadata) != (None, None, None, None) or (elsize, alignment) != (-1, -1):
            raise CheckpointFormatError(
                f"invalid pickle: dtype {self.dtype} with fields, subarrays or a custom size is not supported"
            )
        if byteorder not in ("<", ">", "|", "="):
            raise CheckpointFormatError(f"invalid pickle: dtype byte order {byteorder!r}")
        if byteorder in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(byteorder)
        self._has_state = True


def _safe_dtype(spec, align=False, copy=False):
    """Build a dtype record from a pickled type string; only numeric, bool and object types are accepted.

    Object dtypes are only kept for the 0-d array that wraps the object of a pickled `.npy` file;
    `_Materializer` rejects object arrays anywhere else.
    """
    if not isinstance(spec, str):
        raise CheckpointFormatError(f"invalid pickle: dtype spec {spec!r} is not a type name")
    try:
        dtype = np.dtype(spec)
    except (TypeError, ValueError) as error:
        raise CheckpointFormatError(f"invalid pickle: dtype spec {spec!r}: {error}") from error
    if dtype != np.dtype(object):
        _check_numeric_dtype(dtype, f"a pickled array (dtype spec {spec!r})")
    return _DtypeRecord(dtype)


class _NdarrayClass:
    """The numpy.ndarray global: only accepted as the class argument of _reconstruct."""

    __slots__ = ()

    def __repr__(self):
        return "numpy.ndarray"


_NDARRAY_CLASS = _NdarrayClass()


def _raw_bytes(data, what):
    if isinstance(data, str):
        # Python 2 pickles store array bytes as a str; numpy reads it back as latin1.
        return data.encode("latin1")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    raise CheckpointFormatError(f"invalid pickle: {what} data has type {type(data).__name__}, expected bytes")


def _array_from_bytes(data, dtype, shape, fortran_order, what):
    """Return an owned, native-order array of `shape` from exactly numel * itemsize raw bytes."""
    shape = _check_shape(shape, f"{what} shape")
    numel = math.prod(shape)
    data = _raw_bytes(data, what)
    num_bytes = memoryview(data).nbytes
    if num_bytes != numel * dtype.itemsize:
        raise CheckpointFormatError(
            f"invalid pickle: {what} of shape {shape} and dtype {dtype} needs {numel * dtype.itemsize} bytes, "
            f"its data has {num_bytes}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=numel)
    array = flat.reshape(shape, order="F" if fortran_order else "C")
    return np.array(array, dtype=dtype.newbyteorder("="), order="C", copy=True)


class _ArrayRecord:
    """A pickled NumPy array: empty after _reconstruct, filled by BUILD (or directly by _frombuffer)."""

    __slots__ = ("array", "object_item", "has_data")

    def __init__(self, array=None):
        self.array = array
        self.object_item = None
        self.has_data = array is not None

    def apply_state(self, state):
        """Fill the record from an ndarray state (version, shape, dtype, is_fortran, data); version is optional."""
        if self.has_data:
            raise CheckpointFormatError("invalid pickle: BUILD applied to an array that already has data")
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise CheckpointFormatError("invalid pickle: unsupported ndarray state")
        shape, dtype_record, fortran_order, data = state
        if not isinstance(dtype_record, _DtypeRecord) or not isinstance(fortran_order, (bool, int)):
            raise CheckpointFormatError("invalid pickle: ndarray state without a dtype")
        if dtype_record.dtype == np.dtype(object):
            # The 0-d object array that np.save wraps around a pickled dict: its data is [item].
            if tuple(shape) != () or not isinstance(data, list) or len(data) != 1:
                raise CheckpointFormatError("invalid pickle: object arrays are only supported as a 0-d wrapper")
            self.object_item = data[0]
        else:
            self.array = _array_from_bytes(data, dtype_record.dtype, shape, fortran_order, "pickled array")
        self.has_data = True

    def numeric_array(self, where):
        """Return the array, raising when the record is empty or contains an object."""
        if not self.has_data:
            raise CheckpointFormatError(f"{where} is an array whose data is missing from the pickle")
        if self.array is None:
            raise CheckpointFormatError(
                f"{where} is an object array; only bool, integer, float and complex arrays can be read"
            )
        return self.array


def _safe_reconstruct(subtype, shape, typecode):
    """Start an ndarray unpickle (numpy's _reconstruct); only plain ndarray is allowed as the class."""
    if subtype is not _NDARRAY_CLASS:
        raise CheckpointFormatError(f"invalid pickle: array class {subtype!r} is not numpy.ndarray")
    return _ArrayRecord()


def _safe_scalar(dtype_record, value=None):
    """Rebuild a NumPy scalar from its raw bytes; object scalars are rejected."""
    if not isinstance(dtype_record, _DtypeRecord) or dtype_record.dtype == np.dtype(object):
        raise CheckpointFormatError(f"invalid pickle: scalar of dtype {dtype_record!r}")
    return _array_from_bytes(value, dtype_record.dtype, (), False, "pickled scalar")[()]


def _safe_frombuffer(buffer, dtype_record, shape, order):
    """Rebuild an array pickled with protocol 5 in-band buffers."""
    if not isinstance(dtype_record, _DtypeRecord) or dtype_record.dtype == np.dtype(object) or order not in ("C", "F"):
        raise CheckpointFormatError(f"invalid pickle: buffer array of dtype {dtype_record!r}, order {order!r}")
    return _ArrayRecord(_array_from_bytes(buffer, dtype_record.dtype, shape, order == "F", "pickled buffer array"))


# numpy >= 2 pickles under numpy._core, older versions under numpy.core.
_MULTIARRAY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC_MODULES = ("numpy.core.numeric", "numpy._core.numeric")
_NUMPY_GLOBALS = dict(
    (
        *_CONTAINER_GLOBALS.items(),
        (("numpy", "ndarray"), _NDARRAY_CLASS),
        _allowed("numpy", "dtype", _safe_dtype),
        *(_allowed(module, "_reconstruct", _safe_reconstruct) for module in _MULTIARRAY_MODULES),
        *(_allowed(module, "scalar", _safe_scalar) for module in _MULTIARRAY_MODULES),
        *(_allowed(module, "_frombuffer", _safe_frombuffer) for module in _NUMERIC_MODULES),
    )
)


def _paddle_tensor_tuple(items):
    """Unwrap a Paddle tensor, which paddle.save pickles as `tuple(((name, ndarray),))`."""
    items = tuple(items)
    if len(items) == 2 and isinstance(items[0], str) and isinstance(items[1], _ArrayRecord):
        return items[1]
    return items


def _paddle_dense_tensor(expression, namespace=None):
    """Unwrap a Paddle DenseTensor, which paddle.save pickles as `eval('data', {'data': ndarray})`.

    Nothing is evaluated: only that exact expression is accepted.
    """
    if expression != "data" or not isinstance(namespace, dict) or not isinstance(namespace.get("data"), _ArrayRecord):
        raise CheckpointFormatError(f"invalid pickle: eval({expression!r}) is not a Paddle tensor record")
    return namespace["data"]


_PADDLE_GLOBALS = dict(
    (
        *_NUMPY_GLOBALS.items(),
        _allowed("builtins", "tuple", _paddle_tensor_tuple),
        _allowed("builtins", "eval", _paddle_dense_tensor),
    )
)

PADDLE_NAME_TABLE_KEY = "StructuredToParameterName@@"
PADDLE_BIG_PARAM_KEY = "UnpackBigParamInfor@@"


def _join_big_params(state, path):
    """Reassemble arrays that paddle.save split into slices (pickle protocols 2 and 3, > 1 GiB)."""
    info = state.pop(PADDLE_BIG_PARAM_KEY)
    if not isinstance(info, dict):
        raise CheckpointFormatError(f"{path}: {PADDLE_BIG_PARAM_KEY} has type {type(info).__name__}, expected a dict")
    for key, entry in info.items():
        try:
            slice_keys = entry["slices"]
            if not isinstance(slice_keys, list) or not all(isinstance(part, str) for part in slice_keys):
                raise TypeError(f"slices {slice_keys!r} is not a list of keys")
            parts = [state.pop(part) for part in slice_keys]
            if not all(isinstance(part, np.ndarray) for part in parts):
                raise TypeError("a slice is not an array")
            state[key] = np.concatenate(parts).reshape(_check_shape(entry["OriginShape"], "split parameter shape"))
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
    obj = _Materializer(path).run(obj)
    if isinstance(obj, dict) and PADDLE_BIG_PARAM_KEY in obj:
        obj = _join_big_params(obj, path)
    return obj


def _read_npy_header(file, path):
    """Return (shape, fortran_order, dtype) from a .npy header."""
    try:
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(file)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(file)
        raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, SyntaxError, TypeError, EOFError) as error:
        raise CheckpointFormatError(f"{path} is not a valid .npy file: {error}") from error


def _read_plain_npy(file, path, shape, fortran_order, dtype):
    """Read the data of a .npy file without objects, after checking its size against the file."""
    try:
        _check_numeric_dtype(dtype, "the .npy array")
        shape = _check_shape(shape, ".npy shape")
    except CheckpointFormatError as error:
        raise CheckpointFormatError(f"{path}: {error}") from error
    num_bytes = math.prod(shape) * dtype.itemsize
    raw = _read_exact(file, num_bytes, path, "the array data")
    return _array_from_bytes(raw, dtype, shape, fortran_order, "the .npy array")


def load_pickled_npy(path):
    """Load a `.npy` file that contains a pickled object (np.save of a dict) with the restricted unpickler.

    Returns the stored object itself (the `[()]` item of the 0-d object array). A `.npy` file
    without objects is read as a plain array.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as file:
        shape, fortran_order, dtype = _read_npy_header(file, path)
        if not dtype.hasobject:
            return _read_plain_npy(file, path, shape, fortran_order, dtype)
        if dtype != np.dtype(object) or tuple(shape) != ():
            raise CheckpointFormatError(
                f"{path}: a .npy object array of shape {shape} and dtype {dtype} is not supported; "
                "expected a single pickled object (shape ())"
            )
        wrapper = _unpickle(file, path, _NUMPY_GLOBALS, encoding="latin1")
    if not isinstance(wrapper, _ArrayRecord) or wrapper.array is not None or not wrapper.has_data:
        raise CheckpointFormatError(f"{path}: pickled payload is not the 0-d object array its header declares")
    return _Materializer(path).run(wrapper.object_item)
