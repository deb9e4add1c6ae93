"""Tests that crafted checkpoint files cannot run code, corrupt memory, exhaust memory or crash the
converter: each file is written opcode by opcode and must fail with one error naming it."""

import io
import pickle
import struct
import warnings
import zipfile

import numpy as np
import pytest

from checkpoints.convert import main as convert_main
from pipeline.checkpoint import torch_format
from pipeline.checkpoint.convert import ConversionError, convert_files
from pipeline.checkpoint.torch_format import (
    CheckpointFormatError,
    load_paddle_file,
    load_pickled_npy,
    load_torch_file,
)
from pipeline.models.mtcnn.weights import read_official_npy
from tests.test_torch_format import write_torch_file

# ----------------------------------------------------------------------------------------------
# Pickle opcodes, written by hand so the files can hold what no pickler would write.

PROTO2 = b"\x80\x02"
MARK, STOP, TUPLE, REDUCE, BUILD = b"(", b".", b"t", b"R", b"b"
EMPTY_DICT, EMPTY_TUPLE, SETITEM, SETITEMS, NONE = b"}", b")", b"s", b"u", b"N"
NEWFALSE, NEWTRUE, TUPLE2, BINPERSID = b"\x89", b"\x88", b"\x86", b"Q"


def text(value):
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def integer(value):
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    return b"L" + str(value).encode() + b"L\n"


def global_name(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def small_bytes(data):
    return b"C" + bytes([len(data)]) + data


def int_tuple(values):
    return MARK + b"".join(integer(v) for v in values) + TUPLE


def torch_tensor(key, numel, size, stride, offset=0, storage_type="FloatStorage"):
    """Return the opcodes of _rebuild_tensor_v2 over storage `key` with the given geometry."""
    storage_id = MARK + text("storage") + global_name("torch", storage_type) + text(key) + text("cpu") + integer(numel)
    hooks = global_name("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
    arguments = MARK + storage_id + TUPLE + BINPERSID + integer(offset) + int_tuple(size) + int_tuple(stride)
    return global_name("torch._utils", "_rebuild_tensor_v2") + arguments + NEWFALSE + hooks + TUPLE + REDUCE


def dict_pickle(items):
    """Return a whole pickle of a dict whose values are opcode strings."""
    body = b"".join(text(key) + value for key, value in items)
    return PROTO2 + EMPTY_DICT + MARK + body + SETITEMS + STOP


def write_zip(path, data_pkl, storages=(), compression=zipfile.ZIP_STORED, extra_members=()):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w", compression=compression) as archive:
            archive.writestr("archive/data.pkl", data_pkl)
            archive.writestr("archive/byteorder", "little")
            for key, data in storages:
                archive.writestr(f"archive/data/{key}", data)
            for name, data in extra_members:
                archive.writestr(name, data)
    return path


def numpy_dtype(spec):
    """Return the opcodes of numpy's dtype(spec, False, True), without its BUILD."""
    return global_name("numpy", "dtype") + MARK + text(spec) + NEWFALSE + NEWTRUE + TUPLE + REDUCE


def dtype_state(byteorder="<", names=b"N", fields=b"N", elsize=-1, alignment=-1, flags=0):
    return MARK + integer(3) + text(byteorder) + NONE + names + fields + integer(elsize) + integer(alignment) + integer(flags) + TUPLE


def numpy_array(dtype_opcodes, shape, data_opcodes):
    """Return the opcodes of numpy's _reconstruct + BUILD((1, shape, dtype, False, data))."""
    reconstruct = (
        global_name("numpy.core.multiarray", "_reconstruct")
        + MARK + global_name("numpy", "ndarray") + int_tuple((0,)) + small_bytes(b"b") + TUPLE + REDUCE
    )
    state = MARK + integer(1) + int_tuple(shape) + dtype_opcodes + NEWFALSE + data_opcodes + TUPLE
    return reconstruct + state + BUILD


def object_field_dtype():
    """Return a V8 dtype that BUILD turns into a struct with one object field (raw bytes as pointers)."""
    object_dtype = numpy_dtype("O") + dtype_state("|", flags=63) + BUILD
    fields = EMPTY_DICT + text("a") + MARK + object_dtype + integer(0) + TUPLE + SETITEM
    return numpy_dtype("V8") + dtype_state("|", names=MARK + text("a") + TUPLE, fields=fields, elsize=8, alignment=1) + BUILD


def write_npy_with_pickle(path, pickle_bytes):
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + pickle_bytes)
    return path


def object_wrapper(item_opcodes):
    """Return a whole pickle of the 0-d object array np.save wraps around a pickled object."""
    data = b"]" + item_opcodes + b"a"  # EMPTY_LIST, item, APPEND
    return PROTO2 + numpy_array(numpy_dtype("O") + dtype_state("|", flags=63) + BUILD, (), data) + STOP


# ----------------------------------------------------------------------------------------------
# NumPy dtypes and arrays: BUILD cannot reshape them into something unsafe.


def test_object_field_dtype_rejected(tmp_path):
    forged = numpy_array(object_field_dtype(), (2,), small_bytes(b"A" * 16))
    path = tmp_path / "objfield.pdparams"
    path.write_bytes(PROTO2 + EMPTY_DICT + text("w") + forged + SETITEM + STOP)

    with pytest.raises(CheckpointFormatError) as error:
        load_paddle_file(path)

    assert str(path) in str(error.value)
    assert "V8" in str(error.value)


def test_float_dtype_given_fields_rejected(tmp_path):
    fields = EMPTY_DICT + text("a") + MARK + numpy_dtype("O") + integer(0) + TUPLE + SETITEM
    forged_dtype = numpy_dtype("f8") + dtype_state("|", names=MARK + text("a") + TUPLE, fields=fields, elsize=8) + BUILD
    path = tmp_path / "fields.pdparams"
    path.write_bytes(PROTO2 + EMPTY_DICT + text("w") + numpy_array(forged_dtype, (1,), small_bytes(b"A" * 8)) + SETITEM + STOP)

    with pytest.raises(CheckpointFormatError, match="fields, subarrays or a custom size"):
        load_paddle_file(path)


def test_mtcnn_npy_object_field_rejected(tmp_path):
    forged = numpy_array(object_field_dtype(), (2,), small_bytes(b"A" * 16))
    item = EMPTY_DICT + text("features.conv1.weight") + forged + SETITEM
    path = write_npy_with_pickle(tmp_path / "pnet.npy", object_wrapper(item))

    with pytest.raises(CheckpointFormatError) as error:
        read_official_npy(path)

    assert str(path) in str(error.value)


def test_nested_object_array_rejected(tmp_path):
    path = tmp_path / "nested.npy"
    np.save(path, {"w": np.array({"inner": 1}, dtype=object)}, allow_pickle=True)

    with pytest.raises(CheckpointFormatError, match="entry 'w' is an object array"):
        load_pickled_npy(path)


def test_structured_npy_rejected(tmp_path):
    path = tmp_path / "structured.npy"
    np.save(path, np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]))

    with pytest.raises(CheckpointFormatError, match="not supported"):
        load_pickled_npy(path)


def test_array_byte_count_checked(tmp_path):
    short_data = numpy_array(numpy_dtype("f4") + dtype_state() + BUILD, (4,), small_bytes(b"\0" * 8))
    path = tmp_path / "short.pdparams"
    path.write_bytes(PROTO2 + EMPTY_DICT + text("w") + short_data + SETITEM + STOP)

    with pytest.raises(CheckpointFormatError, match="needs 16 bytes, its data has 8"):
        load_paddle_file(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_roundtrip(tmp_path, protocol):
    obj = {
        "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        "scalar": np.float32(2.5),
        "mask": np.array([True, False]),
    }
    path = tmp_path / "arrays.pdparams"
    with open(path, "wb") as file:
        pickle.dump(obj, file, protocol=protocol)

    loaded = load_paddle_file(path)

    for key, expected in obj.items():
        np.testing.assert_array_equal(loaded[key], expected, err_msg=key)
    assert loaded["big_endian"].dtype == np.dtype(np.float32)
    assert loaded["scalar"] == np.float32(2.5)


# ----------------------------------------------------------------------------------------------
# Memory: a small file cannot make the reader allocate much more than its own size.


def test_stride_zero_expansion_rejected(tmp_path):
    data_pkl = dict_pickle([("w", torch_tensor("0", numel=1, size=(2048, 2048), stride=(0, 0)))])
    path = write_zip(tmp_path / "stride0.pt", data_pkl, [("0", b"\0" * 4)])

    with pytest.raises(CheckpointFormatError, match="repeat storage elements"):
        load_torch_file(path)


def test_bytearray_from_length_rejected(tmp_path):
    data_pkl = PROTO2 + global_name("builtins", "bytearray") + MARK + integer(1 << 20) + TUPLE + REDUCE + STOP
    path = write_zip(tmp_path / "bytearray.pt", data_pkl)

    with pytest.raises(CheckpointFormatError, match=r"bytearray\(\) needs bytes"):
        load_torch_file(path)


def test_bytearray8_length_checked(tmp_path):
    data_pkl = b"\x80\x05" + b"\x96" + struct.pack("<Q", 1 << 40) + STOP
    path = write_zip(tmp_path / "bytearray8.pt", data_pkl)

    with pytest.raises(CheckpointFormatError, match="truncated"):
        load_torch_file(path)


def test_deflated_storage_bomb_rejected(tmp_path):
    numel = 8 << 20  # 32 MiB of float32 zeros, which deflate to about 32 KiB
    data_pkl = dict_pickle([("w", torch_tensor("0", numel=numel, size=(numel,), stride=(1,)))])
    path = write_zip(tmp_path / "bomb.pt", data_pkl, [("0", bytes(4 * numel))], compression=zipfile.ZIP_DEFLATED)

    with pytest.raises(CheckpointFormatError, match="torch.save writes members uncompressed"):
        load_torch_file(path)


def test_storage_member_read_up_to_numel(tmp_path):
    data_pkl = dict_pickle([("w", torch_tensor("0", numel=2, size=(2,), stride=(1,)))])
    storage = np.array([1.5, -2.0, 7.0, 7.0], dtype="<f4").tobytes()
    path = write_zip(tmp_path / "longer.pt", data_pkl, [("0", storage)])

    np.testing.assert_array_equal(load_torch_file(path)["w"], [1.5, -2.0])


def test_plain_npy_size_checked_before_reading(tmp_path):
    path = tmp_path / "huge.npy"
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1048576, 1048576), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 16)

    with pytest.raises(CheckpointFormatError, match="is truncated: the array data needs 4398046511104 bytes"):
        load_pickled_npy(path)


# ----------------------------------------------------------------------------------------------
# Malformed files: one CheckpointFormatError naming the file.


def test_too_many_dimensions_rejected(tmp_path):
    data_pkl = dict_pickle([("w", torch_tensor("0", numel=1, size=(1,) * 70, stride=(0,) * 70))])
    path = write_zip(tmp_path / "ndim.pt", data_pkl, [("0", b"\0" * 4)])

    with pytest.raises(CheckpointFormatError, match="70 dimensions"):
        load_torch_file(path)


def test_zero_size_with_huge_dimension_rejected(tmp_path):
    data_pkl = dict_pickle([("w", torch_tensor("0", numel=1, size=(0, 2**70), stride=(1, 1)))])
    path = write_zip(tmp_path / "zero_dim.pt", data_pkl, [("0", b"\0" * 4)])

    with pytest.raises(CheckpointFormatError, match="more than .* elements"):
        load_torch_file(path)


def test_storage_crc_error_named(tmp_path):
    path = tmp_path / "flipped.pt"
    write_torch_file(path, {"w": np.arange(64, dtype=np.float32)})
    data = bytearray(path.read_bytes())
    offset = bytes(data).index(np.arange(64, dtype="<f4").tobytes()) + 10
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointFormatError, match="Bad CRC-32") as error:
        load_torch_file(path)

    assert str(path) in str(error.value)


def test_big_param_table_checked(tmp_path):
    path = tmp_path / "bigparam.pdparams"
    with open(path, "wb") as file:
        pickle.dump({"UnpackBigParamInfor@@": 5}, file, protocol=2)

    with pytest.raises(CheckpointFormatError, match="UnpackBigParamInfor@@ has type int"):
        load_paddle_file(path)


def test_storage_declared_twice_rejected(tmp_path):
    first = torch_tensor("0", numel=1, size=(1,), stride=(1,))
    second = torch_tensor("0", numel=4, size=(4,), stride=(1,), storage_type="DoubleStorage")
    path = write_zip(tmp_path / "twice.pt", dict_pickle([("a", first), ("b", second)]), [("0", b"\0" * 32)])

    with pytest.raises(CheckpointFormatError, match="storage 0 is declared twice"):
        load_torch_file(path)


def test_duplicate_zip_members_rejected(tmp_path):
    data_pkl = dict_pickle([("w", torch_tensor("0", numel=1, size=(1,), stride=(1,)))])
    path = write_zip(
        tmp_path / "dup.pt", data_pkl, [("0", b"\0" * 4)], extra_members=[("archive/data/0", b"\x01" * 4)]
    )

    with pytest.raises(CheckpointFormatError, match=r"duplicate members \['archive/data/0'\]"):
        load_torch_file(path)


# ----------------------------------------------------------------------------------------------
# BUILD cannot change the loader's own functions.


def test_build_on_allowed_function_rejected(tmp_path):
    defaults_before = torch_format._safe_codecs_encode.__defaults__
    slot_state = NONE + EMPTY_DICT + text("__defaults__") + MARK + text("utf-8") + TUPLE + SETITEM + TUPLE2
    data_pkl = PROTO2 + global_name("_codecs", "encode") + slot_state + BUILD + STOP
    path = write_zip(tmp_path / "setattr.pt", data_pkl)

    with pytest.raises(CheckpointFormatError, match="BUILD"):
        load_torch_file(path)

    assert torch_format._safe_codecs_encode.__defaults__ == defaults_before


def test_build_on_rebuild_function_rejected(tmp_path):
    qualname_before = torch_format._rebuild_tensor.__qualname__
    slot_state = NONE + EMPTY_DICT + text("__qualname__") + text("changed") + SETITEM + TUPLE2
    data_pkl = PROTO2 + global_name("torch._utils", "_rebuild_tensor_v2") + slot_state + BUILD + STOP
    path = write_zip(tmp_path / "qualname.pt", data_pkl)

    with pytest.raises(CheckpointFormatError, match="BUILD"):
        load_torch_file(path)

    assert torch_format._rebuild_tensor.__qualname__ == qualname_before


def test_build_on_dict_rejected(tmp_path):
    data_pkl = PROTO2 + EMPTY_DICT + EMPTY_DICT + text("x") + integer(1) + SETITEM + BUILD + STOP
    path = write_zip(tmp_path / "dict_build.pt", data_pkl)

    with pytest.raises(CheckpointFormatError, match="BUILD .* on a dict is not allowed"):
        load_torch_file(path)


def test_reference_cycle_rejected(tmp_path):
    # A list that contains itself: EMPTY_LIST, MEMOIZE, BINGET 0, APPEND.
    data_pkl = b"\x80\x04]\x94h\x00a" + STOP
    path = write_zip(tmp_path / "cycle.pt", data_pkl)

    with pytest.raises(CheckpointFormatError, match="reference cycle"):
        load_torch_file(path)


# ----------------------------------------------------------------------------------------------
# Converter and CLI: one `error:` line naming the file, exit status 1, nothing written.


def _crafted_sources(tmp_path):
    """Return {case: path} of crafted files that each reader must reject."""
    huge = torch_tensor("0", numel=1, size=(2**20, 2**20), stride=(0, 0))
    flipped = tmp_path / "flipped.pt"
    write_torch_file(flipped, {"style.1.weight": np.arange(64, dtype=np.float32)})
    data = bytearray(flipped.read_bytes())
    data[bytes(data).index(np.arange(64, dtype="<f4").tobytes()) + 10] ^= 0xFF
    flipped.write_bytes(bytes(data))
    big_param = tmp_path / "bigparam.pdparams"
    with open(big_param, "wb") as file:
        pickle.dump({"UnpackBigParamInfor@@": 5}, file, protocol=2)
    truncated_npy = tmp_path / "truncated.npy"
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((100, 100), dtype=np.float32))
    truncated_npy.write_bytes(buffer.getvalue()[:500])
    return {
        "stride0_huge": write_zip(tmp_path / "huge.pt", dict_pickle([("style.1.weight", huge)]), [("0", b"\0" * 4)]),
        "ndim": write_zip(
            tmp_path / "ndim.pt",
            dict_pickle([("style.1.weight", torch_tensor("0", numel=1, size=(1,) * 70, stride=(0,) * 70))]),
            [("0", b"\0" * 4)],
        ),
        "crc": flipped,
        "big_param": big_param,
        "truncated_npy": truncated_npy,
    }


@pytest.mark.parametrize("case", ["stride0_huge", "ndim", "crc", "big_param", "truncated_npy"])
def test_cli_crafted_file_exits_one(tmp_path, capsys, case):
    source = _crafted_sources(tmp_path)[case]
    destination = tmp_path / "out" / "x.safetensors"

    status = convert_main([str(source), str(destination)])

    message = capsys.readouterr().err
    assert status == 1
    assert message.startswith("error: ")
    assert str(source) in message
    assert "Traceback" not in message
    assert not destination.exists()


def test_cli_destination_directory_exits_one(tmp_path, capsys):
    source = tmp_path / "model.pt"
    write_torch_file(source, {"w": np.zeros(2, dtype=np.float32)})
    destination = tmp_path / "taken.safetensors"
    destination.mkdir()

    status = convert_main([str(source), str(destination)])

    assert status == 1
    assert "is a directory" in capsys.readouterr().err


def test_cli_destination_parent_file_exits_one(tmp_path, capsys):
    source = tmp_path / "model.pt"
    write_torch_file(source, {"w": np.zeros(2, dtype=np.float32)})
    parent = tmp_path / "a_file"
    parent.write_text("not a folder")

    status = convert_main([str(source), str(parent / "x.safetensors")])

    message = capsys.readouterr().err
    assert status == 1
    assert message.startswith("error: cannot write")
    assert "is a file, not a directory" in message


def test_non_tensor_under_tensor_key_named(tmp_path):
    source = tmp_path / "leaf.pt"
    write_torch_file(source, {"style.1.weight": "hello", "conv1.conv.weight": np.zeros(1, dtype=np.float32)})

    with pytest.raises(ConversionError) as error:
        convert_files([str(source)], tmp_path / "out.safetensors")

    assert str(source) in str(error.value)
    assert "'style.1.weight' has type str" in str(error.value)


def test_shared_sub_dicts_rejected(tmp_path):
    shared = {"weight": np.zeros(1, dtype=np.float32)}
    source = tmp_path / "shared.pt"
    write_torch_file(source, {"state_dict": {"a": shared, "b": shared}})

    with pytest.raises(ConversionError, match="repeats a dict"):
        convert_files([str(source)], tmp_path / "out.safetensors")


def test_complex_tensor_not_converted(tmp_path):
    source = tmp_path / "complex.pdparams"
    with open(source, "wb") as file:
        pickle.dump({"fc8_101.weight": np.ones((2, 2), np.complex64), "conv1_1.weight": np.ones(1, np.float32)}, file)

    with pytest.raises(ConversionError, match="fc8_101.weight has dtype complex64"):
        convert_files([str(source)], tmp_path / "out.safetensors")

