"""Convert official PyTorch checkpoints (and Paddle ones) into this repository's weight format.

The output is a safetensors file whose keys and layouts equal our modules' `state_dict()`:
BatchNorm `running_mean`/`running_var` become `_mean`/`_variance`, `paddle.nn.Linear` weights
are transposed to [in, out] (EqualLinear keeps the official [out, in]), and DEX keys get '-'
replaced by '_'. The metadata records the format tag, the checkpoint kind, the SHA-256 of the
source file(s) and, for pSp/SAM files, the official training options as JSON.

Sources are read through the restricted unpicklers of `torch_format`, so converting never
runs code from a checkpoint. Entry point: `convert_files(sources, destination)`.
"""

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from pipeline.checkpoint import torch_format

FORMAT_TAG = "sam-paddle-weights/1"


class ConversionError(ValueError):
    """A checkpoint cannot be converted: unknown kind, unmappable keys or mismatched sources."""


# ----------------------------------------------------------------------------------------------
# Key grammar of each kind, in our naming. A key matching no pattern of the detected kind is
# reported as unmappable. The strict loader checks the exact key set against the module.

_BN_OR_PARAM = r"(weight|bias|_mean|_variance|num_batches_tracked)"
_IRSE = (
    rf"(input_layer\.\d+\.{_BN_OR_PARAM}"
    rf"|body\.\d+\.(shortcut_layer|res_layer)\.\d+\.({_BN_OR_PARAM}|fc[12]\.weight)"
    rf"|output_layer\.\d+\.{_BN_OR_PARAM})"
)
_ENCODER = (
    rf"(input_layer\.\d+\.{_BN_OR_PARAM}"
    rf"|body\.\d+\.(shortcut_layer|res_layer)\.\d+\.({_BN_OR_PARAM}|fc[12]\.weight)"
    r"|styles\.\d+\.(convs\.\d+|linear)\.(weight|bias)"
    r"|latlayer[12]\.(weight|bias))"
)
_MODULATED_CONV = r"conv\.(weight|blur\.kernel|modulation\.(weight|bias))"
_GENERATOR = (
    r"(style\.\d+\.(weight|bias)"
    r"|input\.input"
    rf"|(conv1|convs\.\d+)\.({_MODULATED_CONV}|noise\.weight|activate\.bias)"
    rf"|(to_rgb1|to_rgbs\.\d+)\.({_MODULATED_CONV}|bias|upsample\.kernel)"
    r"|noises\.noise_\d+)"
)
_DEX = r"(conv[1-5]_[1-3]|fc6|fc7|fc8_101)\.(weight|bias)"
_LPIPS = r"(net\.(mean|std)|net\.layers\.(0|3|6|8|10)\.(weight|bias)|lin\.[0-4]\.1\.weight)"
_PNET = r"(features\.(conv[1-3]\.(weight|bias)|prelu[1-3]\.weight)|conv4_[12]\.(weight|bias))"
_RNET = r"(features\.(conv[1-4]\.(weight|bias)|prelu[1-4]\.weight)|conv5_[12]\.(weight|bias))"
_ONET = r"(features\.(conv[1-5]\.(weight|bias)|prelu[1-5]\.weight)|conv6_[1-3]\.(weight|bias))"

# EqualLinear weights: [out, in] here and in torch, [in, out] in the paddle-SAM port.
_EQUAL_LINEAR = r"(.*\.)?(style\.\d+|modulation|styles\.\d+\.linear)\.weight"


@dataclasses.dataclass(frozen=True)
class Kind:
    """A checkpoint kind: which module it fills and how its keys map to ours."""

    name: str
    description: str
    config_option: str
    key_pattern: str
    linear_weights: str = ""  # paddle.nn.Linear weights (torch [out, in] -> ours [in, out])
    extra_keys: tuple = ()  # tensors kept in the file that are not module state

    def accepts(self, key):
        return re.fullmatch(self.key_pattern, key) is not None

    def is_linear_weight(self, key):
        return bool(self.linear_weights) and re.fullmatch(self.linear_weights, key) is not None


KINDS = {
    kind.name: kind
    for kind in (
        Kind(
            "sam",
            "SAM: age encoder, frozen pSp encoder, StyleGAN2 decoder and latent_avg (sam_ffhq_aging.pt)",
            "weights.sam",
            rf"((encoder|pretrained_encoder)\.{_ENCODER}|decoder\.{_GENERATOR}|latent_avg)",
        ),
        Kind(
            "psp_encoder",
            "pSp FFHQ encoder with its StyleGAN2 decoder (psp_ffhq_encode.pt)",
            "weights.psp_encoder",
            rf"(encoder\.{_ENCODER}|decoder\.{_GENERATOR}|latent_avg)",
            extra_keys=("latent_avg",),
        ),
        Kind(
            "stylegan",
            "StyleGAN2 FFHQ config-f generator g_ema (stylegan2-ffhq-config-f.pt)",
            "weights.stylegan",
            rf"({_GENERATOR}|latent_avg)",
            extra_keys=("latent_avg",),
        ),
        Kind(
            "irse50",
            "ArcFace IR-SE50 backbone (model_ir_se50.pth)",
            "weights.irse50",
            _IRSE,
            linear_weights=r"output_layer\.3\.weight",
        ),
        Kind(
            "curricularface",
            "CurricularFace IR-101 backbone (CurricularFace_Backbone.pth)",
            "weights.curricularface",
            _IRSE,
            linear_weights=r"output_layer\.3\.weight",
        ),
        Kind(
            "dex",
            "DEX VGG age classifier (dex_age_classifier.pth)",
            "weights.dex",
            _DEX,
            linear_weights=r"fc(6|7|8_101)\.weight",
        ),
        Kind("lpips", "LPIPS AlexNet features and linear heads", "weights.lpips", _LPIPS),
        Kind(
            "mtcnn",
            "MTCNN PNet, RNet and ONet (pnet.npy, rnet.npy, onet.npy)",
            "weights.mtcnn",
            rf"(pnet\.{_PNET}|rnet\.{_RNET}|onet\.{_ONET})",
            linear_weights=r"rnet\.(features\.conv4|conv5_[12])\.weight|onet\.(features\.conv5|conv6_[1-3])\.weight",
        ),
    )
}

# Partial sources that only make sense together: their kind, and the prefix each gets in it.
_PARTIAL_GROUPS = {
    "lpips": {"alexnet": "", "lpips_lin": ""},
    "mtcnn": {"mtcnn_pnet": "pnet.", "mtcnn_rnet": "rnet.", "mtcnn_onet": "onet."},
}
_PARTIAL_DESCRIPTIONS = {
    "alexnet": "torchvision AlexNet (features.* feed LPIPS; classifier.* is unused)",
    "lpips_lin": "LPIPS v0.1 linear heads from PerceptualSimilarity (alex.pth)",
    "mtcnn_pnet": "MTCNN PNet (pnet.npy)",
    "mtcnn_rnet": "MTCNN RNet (rnet.npy)",
    "mtcnn_onet": "MTCNN ONet (onet.npy)",
}


# ----------------------------------------------------------------------------------------------
# Reading sources.


@dataclasses.dataclass
class Source:
    """One input file: its flat tensor dict, its layout and its top-level extras."""

    path: str
    file_format: str  # torch_zip, torch_legacy, paddle, npy
    sha256: str
    tensors: dict  # key -> ndarray, keys as found (nested dicts flattened with '.')
    top_level: dict  # non-tensor-dict entries of the top-level object (opts, latent_avg, ...)
    layout: str = "torch"  # torch, paddle (our naming) or paddle_port
    kind: str = ""


def file_sha256(path):
    """Return the hex SHA-256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_any(path):
    file_format = torch_format.detect_file_format(path)
    if file_format in ("torch_zip", "torch_legacy"):
        return file_format, torch_format.load_torch_file(path)
    if file_format == "npy":
        return file_format, torch_format.load_pickled_npy(path)
    return file_format, torch_format.load_paddle_file(path)


def _flatten_tensors(obj, prefix="", seen_dicts=None):
    """Flatten nested dicts of arrays into {'a.b.c': array}, raising on any leaf that is not an array.

    A dict reached twice is rejected: no state dict shares sub-dicts, and a file that nests
    shared dicts could otherwise expand into exponentially many keys.
    """
    seen_dicts = set() if seen_dicts is None else seen_dicts
    if id(obj) in seen_dicts:
        raise ConversionError(f"entry {prefix[:-1]!r} repeats a dict found elsewhere in the file")
    seen_dicts.add(id(obj))
    flat = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ConversionError(f"key {key!r} under {prefix[:-1] or 'the top level'!r} is not a string")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten_tensors(value, name + ".", seen_dicts))
        elif isinstance(value, np.ndarray):
            flat[name] = value
        else:
            raise ConversionError(f"entry {name!r} has type {type(value).__name__}, expected an array")
    return flat


_STATE_CONTAINERS = ("state_dict", "g_ema")
_PADDLE_TABLES = (torch_format.PADDLE_NAME_TABLE_KEY,)
_TOP_LEVEL_EXTRAS = ("opts", "latent_avg", "optimizer")


def _split_top_level(path, obj):
    """Return (tensor dict, other top-level entries) of a loaded checkpoint object."""
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: the checkpoint is a {type(obj).__name__}, expected a dict of tensors")
    for container in _STATE_CONTAINERS:
        if isinstance(obj.get(container), dict):
            top_level = {key: value for key, value in obj.items() if key != container}
            top_level["_container"] = container
            return obj[container], top_level
    # No container: every entry but the known extras is state, so it must be an array or a dict.
    tensors, top_level = {}, {}
    for key, value in obj.items():
        if key in _PADDLE_TABLES:
            continue
        if key in _TOP_LEVEL_EXTRAS:
            top_level[key] = value
        elif isinstance(value, (dict, np.ndarray)):
            tensors[key] = value
        else:
            raise ConversionError(
                f"{path}: entry {key!r} has type {type(value).__name__}, expected an array "
                f"(top-level entries other than {', '.join(_TOP_LEVEL_EXTRAS)} are tensors)"
            )
    return tensors, top_level


def read_source(path):
    """Read one checkpoint file into a Source (tensors flattened, layout detected)."""
    path = os.fspath(path)
    file_format, obj = _load_any(path)
    state, top_level = _split_top_level(path, obj)
    try:
        tensors = _flatten_tensors(state)
    except ConversionError as error:
        raise ConversionError(f"{path}: {error}") from error
    source = Source(path, file_format, file_sha256(path), tensors, top_level)
    source.layout = _detect_layout(source)
    return source


def _detect_layout(source):
    """Tell torch layout from Paddle files in our naming and from the paddle-SAM port layout."""
    if source.file_format != "paddle":
        return "torch"
    keys = source.tensors.keys()
    if any(key.endswith((".running_mean", ".running_var")) for key in keys):
        return "torch"  # a torch state dict re-saved with paddle.save
    has_bn = any(key.endswith("._mean") for key in keys)
    has_counters = any(key.endswith(".num_batches_tracked") for key in keys)
    if has_bn and not has_counters:
        return "paddle_port"
    if not has_bn and _generator_weights_are_in_out(source.tensors):
        return "paddle_port"
    return "paddle"


def _generator_weights_are_in_out(tensors):
    """Return True when a non-square modulation weight is stored [style_dim, in_channels]."""
    for key, value in tensors.items():
        if key.endswith("modulation.weight") and value.ndim == 2 and value.shape[0] != value.shape[1]:
            style_key = key.replace("modulation.weight", "modulation.bias")
            in_channels = tensors[style_key].shape[0] if style_key in tensors else None
            return in_channels == value.shape[1]
    return False


# ----------------------------------------------------------------------------------------------
# Kind detection.


def _bn_to_ours(key):
    prefix, _, leaf = key.rpartition(".")
    renamed = {"running_mean": "_mean", "running_var": "_variance"}.get(leaf)
    if renamed is None:
        return key
    return f"{prefix}.{renamed}" if prefix else renamed


def detect_kind(source):
    """Return the kind name of a source from its keys and top-level entries."""
    keys = {_bn_to_ours(key).replace("-", "_") for key in source.tensors}

    def has(*names):
        return all(name in keys for name in names)

    def has_prefix(prefix):
        return any(key.startswith(prefix) for key in keys)

    if source.top_level.get("_container") == "g_ema" or has("style.1.weight", "conv1.conv.weight"):
        return "stylegan"
    if has_prefix("pretrained_encoder."):
        return "sam"
    if has_prefix("encoder.") and has_prefix("decoder."):
        first_conv = _find_tensor(source, "encoder.input_layer.0.weight")
        return "sam" if first_conv is not None and first_conv.shape[1] == 4 else "psp_encoder"
    if has("input_layer.0.weight", "output_layer.3.weight"):
        return "irse50" if any(key.endswith(".fc1.weight") for key in keys) else "curricularface"
    if has("conv1_1.weight", "fc8_101.weight"):
        return "dex"
    if has("net.layers.0.weight", "lin.0.1.weight"):
        return "lpips"
    if has("features.0.weight"):
        return "alexnet"
    if has("lin0.model.1.weight"):
        return "lpips_lin"
    if has_prefix("pnet.") and has_prefix("rnet.") and has_prefix("onet."):
        return "mtcnn"
    for net, marker in (("pnet", "conv4_1.weight"), ("rnet", "conv5_1.weight"), ("onet", "conv6_1.weight")):
        if has("features.conv1.weight", marker):
            return f"mtcnn_{net}"
    sample = sorted(source.tensors)[:8]
    raise ConversionError(
        f"{source.path}: cannot tell which checkpoint this is from its keys (first keys: {sample}). "
        f"Known kinds: {', '.join(KINDS)}; pass --kind to choose one"
    )


def _find_tensor(source, key):
    for candidate in (key, key.replace("running_", "_")):
        if candidate in source.tensors:
            return source.tensors[candidate]
    return None


# ----------------------------------------------------------------------------------------------
# Key mapping.


@dataclasses.dataclass
class Conversion:
    """The converted tensors plus what the conversion did, for the summary and the metadata."""

    kind: Kind
    tensors: dict
    sources: list
    extras: dict = dataclasses.field(default_factory=dict)
    opts: dict = None
    renamed_bn_keys: int = 0
    transposed_keys: list = dataclasses.field(default_factory=list)
    filled_keys: list = dataclasses.field(default_factory=list)
    ignored: list = dataclasses.field(default_factory=list)
    cast_to_float32: list = dataclasses.field(default_factory=list)

    @property
    def num_float_elements(self):
        return sum(value.size for value in self.tensors.values() if np.issubdtype(value.dtype, np.floating))


def _partial_key(kind_name, key):
    """Map a key of a partial source (torchvision AlexNet, LPIPS linear heads) to ours, or None."""
    if kind_name == "alexnet":
        if key.startswith("features."):
            return "net.layers." + key[len("features.") :]
        return None  # classifier.* is unused by LPIPS
    if kind_name == "lpips_lin":
        match = re.fullmatch(r"lin(\d+)\.model\.(.+)", key)
        return f"lin.{match.group(1)}.{match.group(2)}" if match else key
    return key


def _map_torch_key(kind_name, key):
    """Return our key for an official key of this kind (None when the entry is unused)."""
    key = _partial_key(kind_name, key)
    if key is None:
        return None
    if kind_name == "dex":
        key = key.replace("-", "_")
    return _bn_to_ours(key)


def _map_source_tensors(source, kind, prefix, conversion):
    """Add one source's tensors to the conversion under our names and return the keys that match no pattern."""
    unmappable = []
    for key, value in source.tensors.items():
        ours = _map_torch_key(source.kind, key)
        if ours is None:
            conversion.ignored.append(f"{key} (unused by {kind.name})")
            continue
        ours = prefix + ours
        conversion.renamed_bn_keys += ours != prefix + key and key.endswith(("running_mean", "running_var"))
        if not kind.accepts(ours):
            unmappable.append(key)
            continue
        conversion.tensors[ours] = _convert_value(source, kind, ours, value, conversion)
    return unmappable


def _convert_value(source, kind, key, value, conversion):
    """Transpose or cast one tensor into our layout; only bool, integer and float tensors are accepted."""
    if value.dtype.kind not in "biuf":
        raise ConversionError(
            f"{source.path}: {key} has dtype {value.dtype}; the networks only have bool, integer and float tensors"
        )
    transpose = (source.layout == "torch" and kind.is_linear_weight(key)) or (
        source.layout == "paddle_port" and re.fullmatch(_EQUAL_LINEAR, key)
    )
    if transpose:
        if value.ndim != 2:
            raise ConversionError(f"{source.path}: {key} should be a 2-D linear weight, found shape {list(value.shape)}")
        value = value.T
        conversion.transposed_keys.append(key)
    if np.issubdtype(value.dtype, np.floating) and value.dtype != np.float32:
        conversion.cast_to_float32.append(key)
        value = value.astype(np.float32)
    return _c_contiguous(value)


def _c_contiguous(value):
    # np.ascontiguousarray would turn a 0-d array (num_batches_tracked) into shape [1].
    return value if value.flags.c_contiguous else value.copy(order="C")


def _fill_batch_counters(conversion):
    """Add num_batches_tracked = 0 next to every BatchNorm that lacks it (paddle-SAM port files)."""
    for key in list(conversion.tensors):
        if key.endswith("._mean"):
            counter = key[: -len("_mean")] + "num_batches_tracked"
            if counter not in conversion.tensors:
                conversion.tensors[counter] = np.zeros((), dtype=np.int64)
                conversion.filled_keys.append(counter)


# ----------------------------------------------------------------------------------------------
# Top-level entries: latent_avg, opts, ignored entries.


def _take_top_level(source, kind, conversion):
    for key, value in source.top_level.items():
        if key == "_container":
            continue
        if key == "latent_avg" and isinstance(value, np.ndarray):
            if value.dtype.kind != "f":
                raise ConversionError(f"{source.path}: latent_avg has dtype {value.dtype}, expected a float array")
            conversion.tensors["latent_avg"] = _c_contiguous(value.astype(np.float32))
            if "latent_avg" in kind.extra_keys:
                conversion.extras["latent_avg"] = list(value.shape)
        elif key == "latent_avg" and value is None:
            conversion.ignored.append("latent_avg (None in the file)")
        elif key == "opts" and isinstance(value, dict):
            conversion.opts = value
        else:
            conversion.ignored.append(f"{key} (top-level entry not used by {kind.name})")


def _group_kind(source_kinds):
    """Return the kind that a set of partial sources makes up, or raise naming what is missing."""
    for group_kind, members in _PARTIAL_GROUPS.items():
        if set(source_kinds) <= set(members):
            missing = sorted(set(members) - set(source_kinds))
            if missing:
                needed = ", ".join(_PARTIAL_DESCRIPTIONS[name] for name in missing)
                raise ConversionError(f"a {group_kind} checkpoint also needs: {needed}")
            return group_kind
    raise ConversionError(f"these sources do not form one checkpoint: kinds {source_kinds}")


def _resolve_kind(sources, forced_kind):
    """Set each source's kind and return the output kind."""
    if forced_kind and len(sources) == 1:
        sources[0].kind = forced_kind
        return KINDS[forced_kind]
    for source in sources:
        source.kind = detect_kind(source)
    kinds = [source.kind for source in sources]
    if len(sources) == 1 and kinds[0] in KINDS:
        return KINDS[kinds[0]]
    if len(set(kinds)) != len(kinds):
        found = {source.path: source.kind for source in sources}
        raise ConversionError(f"two sources have the same kind, so they do not form one checkpoint: {found}")
    kind = KINDS[_group_kind(kinds)]
    if forced_kind and forced_kind != kind.name:
        raise ConversionError(f"--kind {forced_kind} does not match the sources, which together form {kind.name}")
    return kind


def _prefix_for(kind, source):
    return _PARTIAL_GROUPS.get(kind.name, {}).get(source.kind, "")


def convert_sources(sources, forced_kind=None):
    """Map already-read sources to our keys and layouts, raising ConversionError that names unmappable keys."""
    if forced_kind and forced_kind not in KINDS:
        raise ConversionError(f"unknown kind {forced_kind!r}; choose one of {', '.join(KINDS)}")
    kind = _resolve_kind(sources, forced_kind)
    conversion = Conversion(kind=kind, tensors={}, sources=sources)
    unmappable = {}
    for source in sources:
        unmapped = _map_source_tensors(source, kind, _prefix_for(kind, source), conversion)
        if unmapped:
            unmappable[source.path] = unmapped
        _take_top_level(source, kind, conversion)
        if source.layout == "paddle_port":
            _fill_batch_counters(conversion)
    if kind.name == "lpips" and len(sources) > 1:
        _add_lpips_constants(conversion)
    if unmappable:
        raise ConversionError(_unmappable_message(kind, unmappable))
    return conversion


def _add_lpips_constants(conversion):
    """Add the LPIPS input scaling buffers, which are constants of the official code."""
    from pipeline.models.lpips import LPIPS_SCALE, LPIPS_SHIFT

    conversion.tensors["net.mean"] = np.asarray(LPIPS_SHIFT, dtype=np.float32).reshape(1, 3, 1, 1)
    conversion.tensors["net.std"] = np.asarray(LPIPS_SCALE, dtype=np.float32).reshape(1, 3, 1, 1)


def _unmappable_message(kind, unmappable):
    lines = [f"cannot map every key to the {kind.name} layout ({kind.description}):"]
    for path, keys in unmappable.items():
        shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
        lines.append(f"  {path}: {len(keys)} keys could not be mapped: {shown}")
    lines.append("Check that the file is the checkpoint named above, or pass --kind to choose another kind.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Writing.


def build_metadata(conversion):
    """Return the safetensors metadata (all values are strings)."""
    metadata = {
        "format": FORMAT_TAG,
        "kind": conversion.kind.name,
        "source_sha256": ",".join(source.sha256 for source in conversion.sources),
        "source_files": json.dumps([os.path.basename(source.path) for source in conversion.sources]),
        "source_layout": ",".join(sorted({source.layout for source in conversion.sources})),
        "extra_keys": json.dumps(sorted(conversion.extras)),
    }
    if conversion.opts is not None:
        metadata["opts"] = json.dumps(conversion.opts, sort_keys=True, default=str)
    return metadata


def check_destination(destination):
    """Raise ConversionError when `destination` cannot become a file: it is a folder, or a parent is a file."""
    destination = Path(destination)
    if destination.is_dir():
        raise ConversionError(f"output path {destination} is a directory; give a file path ending in .safetensors")
    for parent in destination.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConversionError(f"cannot write {destination}: {parent} is a file, not a directory")
            break


def write_safetensors(conversion, destination):
    """Write the converted tensors atomically: a partial file never takes the destination name.

    Raises ConversionError naming the destination when it cannot be written.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    destination = Path(destination)
    check_destination(destination)
    partial = destination.with_name(destination.name + ".partial")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        save_file(conversion.tensors, str(partial), metadata=build_metadata(conversion))
        # safetensors creates files with mode 0600; give the file the mode the user's umask gives new files.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)
        os.replace(partial, destination)
    except (OSError, SafetensorError) as error:
        raise ConversionError(f"cannot write {destination}: {error}") from error
    finally:
        if partial.is_file():
            partial.unlink()


def expand_source_paths(paths):
    """Expand directories into the checkpoint files they contain (e.g. the three MTCNN .npy files)."""
    expanded = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".pt", ".pth", ".pdparams"))
            if not files:
                raise ConversionError(f"{path}: the directory contains no .npy, .pt, .pth or .pdparams file")
            expanded.extend(files)
        elif path.is_file():
            expanded.append(path)
        else:
            raise FileNotFoundError(f"checkpoint not found: {path}")
    return expanded


def convert_files(source_paths, destination, forced_kind=None):
    """Read, convert and write; return the Conversion for the summary."""
    check_destination(destination)
    sources = [read_source(path) for path in expand_source_paths(source_paths)]
    conversion = convert_sources(sources, forced_kind)
    write_safetensors(conversion, destination)
    return conversion


def summarize(conversion, destination=None):
    """Return a human-readable summary of a conversion, one fact per line."""
    kind = conversion.kind
    lines = []
    for source in conversion.sources:
        lines.append(f"source: {source.path} ({source.file_format}, {source.layout} layout, {source.kind})")
        lines.append(f"  sha256: {source.sha256}")
    lines += [
        f"kind: {kind.name}: {kind.description}",
        f"config option: {kind.config_option}",
        f"entries: {len(conversion.tensors)}",
        f"parameters: {conversion.num_float_elements:,} float elements (buffers included)",
        f"renamed BatchNorm statistics: {conversion.renamed_bn_keys}",
        f"transposed linear weights: {len(conversion.transposed_keys)}",
    ]
    if conversion.filled_keys:
        lines.append(f"filled num_batches_tracked = 0 (absent in the source): {len(conversion.filled_keys)}")
    if conversion.cast_to_float32:
        lines.append(f"cast to float32: {len(conversion.cast_to_float32)}")
    if "latent_avg" in conversion.tensors:
        lines.append(f"latent_avg: {list(conversion.tensors['latent_avg'].shape)}")
    elif kind.name == "stylegan":
        lines.append("latent_avg: missing; SAM needs it when this file is weights.stylegan, so training and "
                     "inference will reject the file (convert the official stylegan2-ffhq-config-f.pt, which has it)")
    elif kind.name == "sam":
        lines.append("latent_avg: not in the file, so SAM cannot add it to the encoded latents")
    if conversion.opts is not None:
        lines.append(f"opts: {len(conversion.opts)} options kept as JSON metadata")
    for entry in conversion.ignored:
        lines.append(f"ignored: {entry}")
    if destination is not None:
        lines.append(f"wrote: {destination}")
    return "\n".join(lines)
