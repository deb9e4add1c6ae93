"""Tests for the torch-free checkpoint readers: real reference files, hand-written torch files,
malicious pickles and truncated files."""

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from pipeline.checkpoint.torch_format import (
    LEGACY_MAGIC_NUMBER,
    CheckpointFormatError,
    UnsafeCheckpointError,
    detect_file_format,
    load_paddle_file,
    load_pickled_npy,
    load_torch_file,
)

GOLDEN_CASES_WITH_WEIGHTS = [
    "a_upfirdn2d_fused_act",
    "b_stylegan2_generator_small",
    "d_sam_forward_small",
    "e_dex_aging_loss",
    "f_id_loss_irse50",
    "g_lpips_alex",
    "h_ranger",
    "i_mtcnn",
]


# ----------------------------------------------------------------------------------------------
# A minimal torch.save writer built on the pure-Python pickler, so the tests need no torch.


class TorchGlobal:
    """A global the written pickle refers to by module and name (the module need not exist here)."""

    def __init__(self, module, name):
        self.module = module
        self.name = name

    def __call__(self, *args):
        # The pickler requires a callable in reduce tuples; this one is only written, never run.
        raise RuntimeError(f"{self.module}.{self.name} is a placeholder")


class TensorView:
    """A tensor that views `storage` (1-D array) with an explicit element offset, size and stride."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


class Parameter:
    """An nn.Parameter wrapping an array."""

    def __init__(self, array):
        self.array = array


class _StorageId:
    def __init__(self, key, array):
        self.key = key
        self.array = array


_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


class _TorchPickler(pickle._Pickler):
    """Pickle arrays the way torch.save pickles tensors: _rebuild_tensor_v2 over a persistent storage id."""

    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storages = []  # [(key, 1-D array)] in first-use order
        self._storage_keys = {}

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, TorchGlobal):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if not isinstance(obj, _StorageId):
            return None
        storage_type = TorchGlobal("torch", _STORAGE_NAMES[obj.array.dtype])
        if self.legacy:
            return ("storage", storage_type, obj.key, "cpu", obj.array.size, None)
        return ("storage", storage_type, obj.key, "cpu", obj.array.size)

    def _storage_id(self, storage):
        if id(storage) not in self._storage_keys:
            key = str(len(self.storages))
            self._storage_keys[id(storage)] = key
            self.storages.append((key, storage))
        return _StorageId(self._storage_keys[id(storage)], storage)

    def reducer_override(self, obj):
        if isinstance(obj, Parameter):
            return (TorchGlobal("torch._utils", "_rebuild_parameter"), (obj.array, True, collections.OrderedDict()))
        if isinstance(obj, np.ndarray):
            # np.ascontiguousarray would give a 0-d array shape [1].
            contiguous = obj if obj.flags.c_contiguous else obj.copy(order="C")
            strides = tuple(s // contiguous.itemsize for s in contiguous.strides)
            obj = TensorView(contiguous.reshape(-1), 0, contiguous.shape, strides)
        if isinstance(obj, TensorView):
            args = (
                self._storage_id(obj.storage),
                obj.offset,
                tuple(obj.size),
                tuple(obj.stride),
                False,
                collections.OrderedDict(),
            )
            return (TorchGlobal("torch._utils", "_rebuild_tensor_v2"), args)
        return NotImplemented


def write_torch_file(path, obj, legacy=False, archive_name="archive", byteorder="little"):
    """Write `obj` (arrays inside containers) in torch's zip or legacy format."""
    buffer = io.BytesIO()
    pickler = _TorchPickler(buffer, legacy)
    pickler.dump(obj)
    if legacy:
        _write_legacy(path, buffer.getvalue(), pickler.storages)
    else:
        _write_zip(path, buffer.getvalue(), pickler.storages, archive_name, byteorder)


def _write_zip(path, data_pkl, storages, archive_name, byteorder):
    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{archive_name}/data.pkl", data_pkl)
        archive.writestr(f"{archive_name}/byteorder", byteorder)
        for key, storage in storages:
            archive.writestr(f"{archive_name}/data/{key}", storage.astype(storage.dtype.newbyteorder(order)).tobytes())
        archive.writestr(f"{archive_name}/version", "3\n")


def _write_legacy(path, data_pkl, storages):
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with open(path, "wb") as file:
        for header in (LEGACY_MAGIC_NUMBER, 1001, sys_info):
            pickle.dump(header, file, protocol=2)
        file.write(data_pkl)
        pickle.dump([key for key, _ in storages], file, protocol=2)
        for _key, storage in storages:
            file.write(struct.pack("<q", storage.size))
            file.write(storage.astype(storage.dtype.newbyteorder("<")).tobytes())


# ----------------------------------------------------------------------------------------------
# Reference files.


@pytest.mark.parametrize("case_name", GOLDEN_CASES_WITH_WEIGHTS)
def test_reference_weights_load(golden, case_name):
    case = golden(case_name)
    obj = load_torch_file(case.weights_path)
    state_dict = obj["state_dict"] if "state_dict" in obj else obj

    assert all(isinstance(value, np.ndarray) for value in state_dict.values())
    expected = case.meta.get("state_dict_keys")
    if expected is None:
        return
    assert list(state_dict.keys()) == [key for key, _, _ in expected]
    for key, shape, dtype in expected:
        assert list(state_dict[key].shape) == shape, key
        assert str(state_dict[key].dtype) == dtype, key


def test_reference_kernel_values(golden):
    weights = load_torch_file(golden("a_upfirdn2d_fused_act").weights_path)
    taps = np.array([1.0, 3.0, 3.0, 1.0])
    # Upsample scales its kernel by factor**2 = 4.
    np.testing.assert_array_equal(weights["up.kernel"], (np.outer(taps, taps) / 64 * 4).astype(np.float32))


def test_reference_sam_extras(golden):
    case = golden("d_sam_forward_small")
    checkpoint = load_torch_file(case.weights_path)

    np.testing.assert_array_equal(checkpoint["latent_avg"], case.io["latent_avg"])
    assert checkpoint["opts"]["output_size"] == 32
    assert checkpoint["opts"]["start_from_encoded_w_plus"] is True


def test_reference_legacy_file_is_legacy(golden):
    path = golden("f_id_loss_irse50").weights_path
    assert not zipfile.is_zipfile(path)
    state_dict = load_torch_file(path)
    assert state_dict["input_layer.1.num_batches_tracked"].dtype == np.int64
    assert state_dict["input_layer.1.num_batches_tracked"].shape == ()


# ----------------------------------------------------------------------------------------------
# Hand-written files.


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_roundtrip_dtypes_and_containers(tmp_path, legacy):
    rng = np.random.default_rng(0)
    obj = {
        "state_dict": collections.OrderedDict(
            [
                ("conv.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
                ("bn.num_batches_tracked", np.array(7, dtype=np.int64)),
                ("half", rng.standard_normal(5).astype(np.float16)),
                ("double", rng.standard_normal((2, 2))),
                ("mask", np.array([True, False, True])),
                ("bytes", np.arange(6, dtype=np.uint8).reshape(2, 3)),
                ("empty", np.zeros((0, 4), dtype=np.float32)),
            ]
        ),
        "opts": {"lr": 1e-4, "name": "run", "flags": [1, 2], "none": None},
        "latent_avg": rng.standard_normal((3, 8)).astype(np.float32),
    }
    path = tmp_path / "ckpt.pt"
    write_torch_file(path, obj, legacy=legacy)

    loaded = load_torch_file(path)

    assert loaded["opts"] == obj["opts"]
    assert isinstance(loaded["state_dict"], collections.OrderedDict)
    for key, array in obj["state_dict"].items():
        assert loaded["state_dict"][key].dtype == array.dtype, key
        assert loaded["state_dict"][key].shape == array.shape, key
        np.testing.assert_array_equal(loaded["state_dict"][key], array)
    np.testing.assert_array_equal(loaded["latent_avg"], obj["latent_avg"])


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_strided_views_share_one_storage(tmp_path, legacy):
    storage = np.arange(24, dtype=np.float32)
    obj = {
        "full": TensorView(storage, 0, (4, 6), (6, 1)),
        "transposed": TensorView(storage, 0, (6, 4), (1, 6)),
        "offset_slice": TensorView(storage, 7, (2, 3), (6, 2)),
        "param": Parameter(np.ones((2, 2), dtype=np.float32)),
    }
    path = tmp_path / "views.pt"
    write_torch_file(path, obj, legacy=legacy)

    loaded = load_torch_file(path)

    np.testing.assert_array_equal(loaded["full"], storage.reshape(4, 6))
    np.testing.assert_array_equal(loaded["transposed"], storage.reshape(4, 6).T)
    expected_slice = [[storage[7 + 6 * i + 2 * j] for j in range(3)] for i in range(2)]
    np.testing.assert_array_equal(loaded["offset_slice"], expected_slice)
    assert loaded["transposed"].flags["C_CONTIGUOUS"]
    assert loaded["param"].shape == (2, 2)


def test_zip_archive_name_and_big_endian(tmp_path):
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "big.pt"
    write_torch_file(path, {"w": array}, archive_name="any_name_here", byteorder="big")

    loaded = load_torch_file(path)

    np.testing.assert_array_equal(loaded["w"], array)
    assert loaded["w"].dtype == np.dtype(np.float32)


def test_out_of_bounds_view_rejected(tmp_path):
    path = tmp_path / "oob.pt"
    write_torch_file(path, {"w": TensorView(np.zeros(4, dtype=np.float32), 2, (3,), (1,))})

    with pytest.raises(CheckpointFormatError, match="reads past the end of storage"):
        load_torch_file(path)


# ----------------------------------------------------------------------------------------------
# Malicious and damaged files.


class _RunsShell:
    """Pickles as a call to os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _payload(marker):
    return {"weight": np.zeros(2, dtype=np.float32), "evil": _RunsShell(f"touch {marker}")}


def test_payload_would_run_under_plain_pickle(tmp_path):
    # Proves the payload used below is live: an unrestricted pickle.loads runs the command.
    marker = tmp_path / "plain_pickle_ran"
    pickle.loads(pickle.dumps(_RunsShell(f"touch {marker}")))
    assert marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_os_system_payload_rejected(tmp_path, legacy):
    marker = tmp_path / "marker_created_by_payload"
    path = tmp_path / "evil.pt"
    write_torch_file(path, _payload(marker), legacy=legacy)

    with pytest.raises(UnsafeCheckpointError) as error:
        load_torch_file(path)

    assert "posix.system" in str(error.value) or "os.system" in str(error.value)
    assert str(path) in str(error.value)
    assert "rejected" in str(error.value)
    assert not marker.exists()


def test_unknown_torch_global_rejected(tmp_path):
    path = tmp_path / "unknown.pt"
    obj = {"x": TorchGlobal("torch.nn.modules.conv", "Conv2d")}
    write_torch_file(path, obj)

    with pytest.raises(UnsafeCheckpointError, match=r"torch\.nn\.modules\.conv\.Conv2d"):
        load_torch_file(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("keep_fraction", [0.2, 0.6, 0.95])
def test_truncated_file_names_path(tmp_path, legacy, keep_fraction):
    full = tmp_path / "full.pt"
    write_torch_file(full, {"w": np.ones((64, 64), dtype=np.float32), "b": np.ones(3, dtype=np.float32)}, legacy=legacy)
    data = full.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: int(len(data) * keep_fraction)])

    with pytest.raises(CheckpointFormatError) as error:
        load_torch_file(truncated)

    assert str(truncated) in str(error.value)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello world")

    with pytest.raises(CheckpointFormatError, match="not a torch checkpoint"):
        load_torch_file(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="does_not_exist.pt"):
        load_torch_file("/nonexistent/does_not_exist.pt")


# ----------------------------------------------------------------------------------------------
# Paddle and pickled-NumPy files.


def test_paddle_state_dict_roundtrip(tmp_path):
    import paddle

    layer = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4), paddle.nn.Linear(4, 2))
    path = tmp_path / "model.pdparams"
    paddle.save(layer.state_dict(), str(path))

    loaded = load_paddle_file(path)

    for key, tensor in layer.state_dict().items():
        np.testing.assert_array_equal(loaded[key], tensor.numpy())


def test_paddle_optimizer_state_roundtrip(tmp_path):
    import paddle

    layer = paddle.nn.Linear(3, 2)
    optimizer = paddle.optimizer.Adam(parameters=layer.parameters())
    layer(paddle.ones([4, 3])).sum().backward()
    optimizer.step()
    path = tmp_path / "model.pdopt"
    paddle.save(optimizer.state_dict(), str(path))

    loaded = load_paddle_file(path)

    for key, value in optimizer.state_dict().items():
        if isinstance(value, paddle.Tensor):
            np.testing.assert_array_equal(loaded[key], value.numpy())


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_paddle_nested_tensors(tmp_path, protocol):
    import paddle

    obj = {"step": 3, "tensors": [paddle.to_tensor([1.0, 2.0]), {"inner": paddle.arange(6).reshape([2, 3])}]}
    path = tmp_path / "nested.pdparams"
    paddle.save(obj, str(path), protocol=protocol)

    loaded = load_paddle_file(path)

    assert loaded["step"] == 3
    np.testing.assert_array_equal(loaded["tensors"][0], [1.0, 2.0])
    np.testing.assert_array_equal(loaded["tensors"][1]["inner"], np.arange(6).reshape(2, 3))


def test_paddle_file_with_payload_rejected(tmp_path):
    marker = tmp_path / "marker_created_by_payload"
    path = tmp_path / "evil.pdparams"
    with open(path, "wb") as file:
        pickle.dump(_payload(marker), file, protocol=4)

    with pytest.raises(UnsafeCheckpointError, match="rejected"):
        load_paddle_file(path)
    assert not marker.exists()


def test_paddle_eval_other_expression_rejected(tmp_path):
    marker = tmp_path / "marker_created_by_payload"
    path = tmp_path / "evil_eval.pdparams"

    class _Eval:
        def __reduce__(self):
            return (eval, (f"__import__('os').system('touch {marker}')", {}))

    with open(path, "wb") as file:
        pickle.dump({"w": _Eval()}, file, protocol=4)

    with pytest.raises(CheckpointFormatError, match="not a Paddle tensor record"):
        load_paddle_file(path)
    assert not marker.exists()


def test_pickled_npy_dict(tmp_path):
    weights = {"features.conv1.weight": np.ones((10, 3, 3, 3), dtype=np.float32), "conv4_1.bias": np.zeros(2, np.float32)}
    path = tmp_path / "pnet.npy"
    np.save(path, weights, allow_pickle=True)

    loaded = load_pickled_npy(path)

    assert set(loaded) == set(weights)
    for key, array in weights.items():
        np.testing.assert_array_equal(loaded[key], array)


def test_pickled_npy_payload_rejected(tmp_path):
    marker = tmp_path / "marker_created_by_payload"
    path = tmp_path / "evil.npy"
    np.save(path, _payload(marker), allow_pickle=True)

    with pytest.raises(UnsafeCheckpointError, match="rejected"):
        load_pickled_npy(path)
    assert not marker.exists()


def test_detect_file_format(tmp_path):
    import paddle

    array = np.zeros(3, dtype=np.float32)
    write_torch_file(tmp_path / "zip.pt", {"w": array})
    write_torch_file(tmp_path / "legacy.pt", {"w": array}, legacy=True)
    np.save(tmp_path / "dict.npy", {"w": array}, allow_pickle=True)
    paddle.save({"w": paddle.zeros([3])}, str(tmp_path / "model.pdparams"))

    assert detect_file_format(tmp_path / "zip.pt") == "torch_zip"
    assert detect_file_format(tmp_path / "legacy.pt") == "torch_legacy"
    assert detect_file_format(tmp_path / "dict.npy") == "npy"
    assert detect_file_format(tmp_path / "model.pdparams") == "paddle"
