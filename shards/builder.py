"""Build webdataset tar shards from an image folder or zip archive (see shards/build.py for the CLI).

The build runs in three passes: list and hash the input files to make the plan (`shards.plan`),
build every shard that has no valid checkpoint, then write index.json per output folder. Shards
are independent, so `workers > 1` builds them in a process pool and gives the same bytes as one
worker. Memory is bounded by one image per worker plus a few small records per input file.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import PIL

from shards import index as shard_index
from shards.errors import SkippedInput
from shards.images import ImageOptions, configure_pil, make_sample
from shards.keys import assign_keys
from shards.plan import Planner, ShardPlan, Split, SplitPlan
from shards.sources import Entry, escape_path, open_source
from shards.tario import ShardTarWriter, canonical_json, file_sha256, fsync_folder

MIB = 1 << 20
SCAN_CHUNK_FILES = 16
PROGRESS_INTERVAL_SEC = 2.0
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class BuildOptions:
    """Every setting of one build, as described by `shards/build.py --help`."""

    input: Path
    output: Path
    resolution: int = 256
    image_format: str = "jpg"
    samples_per_shard: int = 1000
    workers: int = 1
    crop: str = "center"
    splits: tuple[Split, ...] = ()
    strict: bool = False
    align: bool = False
    landmarks: Path | None = None
    max_pixels: int = 100_000_000
    max_file_mb: int = 256

    def image_options(self) -> ImageOptions:
        """Return the settings that shape each sample image."""
        return ImageOptions(self.resolution, self.image_format, self.crop, self.max_pixels)

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        positive = {"--resolution": self.resolution, "--samples-per-shard": self.samples_per_shard,
                    "--workers": self.workers, "--max-pixels": self.max_pixels, "--max-file-mb": self.max_file_mb}
        for flag, value in positive.items():
            if value < 1:
                raise ValueError(f"{flag} is {value}; use a positive integer")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"--format is {self.image_format!r}; use jpg or png")
        if self.crop not in ("center", "reject"):
            raise ValueError(f"--crop is {self.crop!r}; use center or reject")
        if self.align and self.landmarks is None:
            raise ValueError("--align needs --landmarks PATH, dlib's 68-point shape predictor "
                             "(shape_predictor_68_face_landmarks.dat)")
        if self.landmarks is not None and not self.align:
            raise ValueError(f"--landmarks {self.landmarks} is set without --align; add --align or drop --landmarks")
        if self.align and not Path(self.landmarks).is_file():
            raise ValueError(f"--landmarks file {self.landmarks} not found; pass the path of dlib's "
                             "shape_predictor_68_face_landmarks.dat")
        output = Path(os.path.realpath(self.output))
        source = Path(os.path.realpath(self.input))
        if output == source or source in output.parents:
            raise ValueError(f"--output {self.output} is inside --input {self.input}; choose a folder outside it")

    def content_settings(self, landmarks_sha256: str | None) -> dict:
        """Return the settings that change shard bytes, which go into every plan digest."""
        return {
            "format": shard_index.INDEX_FORMAT,
            "resolution": self.resolution,
            "image_format": self.image_format,
            "crop": self.crop,
            "max_pixels": self.max_pixels,
            "max_file_mb": self.max_file_mb,
            "align": {"landmarks_sha256": landmarks_sha256} if self.align else None,
            "pillow": PIL.__version__,
        }

    def build_record(self, landmarks_sha256: str | None) -> dict:
        """Return the options stored in index.json, without the worker count and output path."""
        record = self.content_settings(landmarks_sha256)
        record.pop("format")
        record.update({
            "input": Path(self.input).name,
            "samples_per_shard": self.samples_per_shard,
            "split": ",".join(f"{s.name}={s.fraction:g}" for s in self.splits) or None,
            "strict": self.strict,
        })
        return record


@dataclass
class BuildReport:
    """Counts of a finished build, returned to the CLI."""

    num_written: int = 0
    num_upsampled: int = 0
    num_shards: int = 0
    num_shards_reused: int = 0
    skipped_by_kind: Counter = field(default_factory=Counter)
    removed_splits: list[str] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped_by_kind.values())

    def summary_line(self, elapsed_sec: float) -> str:
        """Return the one-line summary printed at the end of a build."""
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.skipped_by_kind.items()))
        skipped = f"{self.num_skipped} skipped" + (f" ({kinds})" if kinds else "")
        line = (f"summary: {self.num_written} written, {skipped}, {self.skipped_by_kind['duplicate']} duplicates, "
                f"{self.num_upsampled} upsampled, {self.num_shards} shards ({self.num_shards_reused} reused), "
                f"{elapsed_sec:.1f} s")
        if self.removed_splits:
            line += f", removed the shard sets of earlier splits {', '.join(self.removed_splits)}"
        return line


# ----------------------------------------------------------------------------- worker side

@dataclass
class WorkerState:
    source: object
    image_options: ImageOptions
    max_file_bytes: int
    aligner: object | None


_WORKER: WorkerState | None = None


def init_worker(options: BuildOptions, kill_with_parent: bool) -> None:
    """Open the input and load the aligner once per process."""
    global _WORKER
    if kill_with_parent:
        set_parent_death_signal()
    configure_pil()
    aligner = make_shard_aligner(options.landmarks, options.resolution) if options.align else None
    _WORKER = WorkerState(open_source(options.input, exclude=options.output), options.image_options(),
                          options.max_file_mb * MIB, aligner)


def set_parent_death_signal() -> None:
    """Ask Linux to kill this worker when the build process dies, so no orphan keeps writing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        # NOTE: without prctl (non-Linux) an orphaned worker may finish its current shard.
        pass


def make_shard_aligner(landmarks: Path, resolution: int):
    """Return a callable that aligns one RGB image or raises SkippedInput when no face is found."""
    from pipeline.data.face_align import FaceAligner, NoFaceFound

    face_aligner = FaceAligner(landmarks, output_size=resolution)

    def align(rgb):
        try:
            aligned = face_aligner.align(rgb)
        except NoFaceFound as exc:
            raise SkippedInput("no_face", f"no face detected: {exc}") from exc
        return aligned.image, aligned.metadata()

    return align


def hash_entry(entry: Entry) -> tuple[str | None, SkippedInput | None]:
    """Return the sha256 of one input file, or the reason it cannot be read."""
    if entry.problem is not None:
        return None, entry.problem
    try:
        data = _WORKER.source.read_bytes(entry.relpath, _WORKER.max_file_bytes)
    except SkippedInput as problem:
        return None, problem
    return hashlib.sha256(data).hexdigest(), None


def build_shard(task: tuple[ShardPlan, str]) -> tuple[str, str, dict]:
    """Write one shard under a temporary name, checkpoint it, then rename it into place."""
    plan, plan_digest = task
    partial_path = plan.folder / f".{plan.name}.{os.getpid()}.partial"
    skipped, num_samples, num_upsampled = [], 0, 0
    with open(partial_path, "wb") as handle:
        writer = ShardTarWriter(handle)
        for member in plan.members:
            try:
                sample = make_member_sample(member)
            except SkippedInput as problem:
                skipped.append({"path": escape_path(member.relpath), "kind": problem.kind, "reason": problem.reason})
                continue
            except Exception as exc:  # noqa: BLE001 - decoders raise arbitrary errors on crafted files
                reason = f"decoder failed: {type(exc).__name__}: {exc}"
                print(f"warning: skipped {escape_path(member.relpath)}: {reason}", file=sys.stderr, flush=True)
                skipped.append({"path": escape_path(member.relpath), "kind": "decode_error", "reason": reason})
                continue
            writer.add_member(f"{member.key}.{_WORKER.image_options.image_format}", sample.image_bytes)
            writer.add_member(f"{member.key}.json", sample.meta_bytes())
            num_samples += 1
            num_upsampled += int(sample.meta["upsampled"])
        num_bytes, sha256 = writer.close()
        handle.flush()
        os.fsync(handle.fileno())

    record = {"name": plan.name, "samples": num_samples, "bytes": num_bytes, "sha256": sha256,
              "upsampled": num_upsampled}
    result = {"record": record, "skipped": skipped}
    shard_index.write_checkpoint(plan, plan_digest, result)
    os.replace(partial_path, plan.folder / plan.name)
    fsync_folder(plan.folder)
    return str(plan.folder), plan.name, result


def make_member_sample(member):
    """Read, check and convert one planned file into a sample with its metadata."""
    data = _WORKER.source.read_bytes(member.relpath, _WORKER.max_file_bytes)
    if hashlib.sha256(data).hexdigest() != member.sha256:
        raise SkippedInput("changed", "file content changed during the build; re-run the build")
    sample = make_sample(data, _WORKER.image_options, _WORKER.aligner)
    sample.meta.update({"key": member.key, "source": escape_path(member.relpath), "sha256": member.sha256})
    return sample


# ----------------------------------------------------------------------------- main side

class InlinePool:
    """The subset of multiprocessing.Pool used here, run in this process (for --workers 1)."""

    def __init__(self, options: BuildOptions):
        init_worker(options, kill_with_parent=False)

    def imap(self, func, items: Iterable, chunksize: int = 1) -> Iterator:
        return map(func, items)

    imap_unordered = imap

    def close(self) -> None:
        pass

    def terminate(self) -> None:
        pass

    def join(self) -> None:
        pass


class Progress:
    """Progress lines on stderr, at most one every PROGRESS_INTERVAL_SEC except the last."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.start_sec = time.monotonic()
        self.last_print_sec = 0.0
        self.stage = None
        self.stage_start_sec = self.start_sec

    def update(self, stage: str, done: int, total: int, unit: str, images: int | None = None) -> None:
        """Print `stage done/total unit`, with the image rate when `images` is given."""
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.stage_start_sec, self.last_print_sec = stage, now, 0.0
        if done < total and now - self.last_print_sec < PROGRESS_INTERVAL_SEC:
            return
        self.last_print_sec = now
        line = f"[{stage}] {done}/{total} {unit}"
        if images is not None:
            line += f", {images} images, {images / max(now - self.stage_start_sec, 1e-9):.1f} images/s"
        print(line, file=self.stream, flush=True)

    def elapsed_sec(self) -> float:
        return time.monotonic() - self.start_sec


def run_build(options: BuildOptions, progress: Progress | None = None) -> BuildReport:
    """Build all shards and index files for `options` and return the counts."""
    progress = progress or Progress()
    options.validate()
    open_source(options.input, exclude=options.output).close()
    shard_index.check_output_folder(Path(options.output), [split.name for split in options.splits])
    landmarks_sha256 = preflight_alignment(options)
    Path(options.output).mkdir(parents=True, exist_ok=True)

    pool = make_pool(options)
    try:
        split_plans = plan_build(options, pool, progress)
        settings = options.content_settings(landmarks_sha256)
        results, num_reused = build_missing_shards(split_plans, settings, pool, progress)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()

    report = write_indexes(options, split_plans, results, options.build_record(landmarks_sha256))
    report.num_shards_reused = num_reused
    return report


def preflight_alignment(options: BuildOptions) -> str | None:
    """Load the landmark model once before any work, so a bad file fails at once."""
    if not options.align:
        return None
    from pipeline.data.face_align import FaceAligner

    try:
        FaceAligner(options.landmarks, output_size=options.resolution)
    except ImportError as exc:
        raise ValueError(str(exc)) from exc
    return file_sha256(Path(options.landmarks))


def make_pool(options: BuildOptions):
    """Return a process pool for `workers > 1`, or an in-process stand-in for one worker."""
    if options.workers == 1:
        return InlinePool(options)
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    return context.Pool(options.workers, initializer=init_worker, initargs=(options, True))


def plan_build(options: BuildOptions, pool, progress: Progress) -> list[SplitPlan]:
    """List, key and hash every input file, and cut the result into shard plans."""
    source = open_source(options.input, exclude=options.output)
    entries = source.list_entries()
    source.close()
    keys = assign_keys(entry.relpath for entry in entries)
    planner = Planner(Path(options.output), options.splits, options.samples_per_shard)

    hashes = pool.imap(hash_entry, entries, chunksize=SCAN_CHUNK_FILES)
    for done, (entry, key, (sha256, problem)) in enumerate(zip(entries, keys, hashes), start=1):
        planner.add(entry.relpath, key, sha256, problem)
        progress.update("scan", done, len(entries), "files")
    return planner.finish()


def plan_digest(settings: dict, plan: ShardPlan) -> str:
    """Return the sha256 that ties a checkpoint to the settings and files of one shard."""
    members = [[escape_path(m.relpath), m.key, m.sha256] for m in plan.members]
    return hashlib.sha256(canonical_json({"settings": settings, "shard": plan.name, "members": members})).hexdigest()


def build_missing_shards(split_plans: list[SplitPlan], settings: dict, pool, progress: Progress):
    """Build every shard without a valid checkpoint and return all results and the reused count."""
    results: dict[tuple[str, str], dict] = {}
    tasks = []
    for split_plan in split_plans:
        split_plan.folder.mkdir(parents=True, exist_ok=True)
        shard_index.remove_temp_files(split_plan.folder)
        for plan in split_plan.shards:
            digest = plan_digest(settings, plan)
            result = shard_index.load_valid_checkpoint(plan, digest)
            if result is None:
                tasks.append((plan, digest))
            else:
                results[(str(plan.folder), plan.name)] = result

    num_reused = len(results)
    total = num_reused + len(tasks)
    if tasks:
        for split_plan in split_plans:
            # An index must never describe a mix of old and new shards.
            (split_plan.folder / shard_index.INDEX_NAME).unlink(missing_ok=True)
    images_done = 0
    progress.update("build", num_reused, total, "shards done", images=0)
    for folder, name, result in pool.imap_unordered(build_shard, tasks):
        results[(folder, name)] = result
        images_done += result["record"]["samples"] + len(result["skipped"])
        progress.update("build", len(results), total, "shards done", images=images_done)
    return results, num_reused


def write_indexes(options: BuildOptions, split_plans: list[SplitPlan], results: dict, build: dict) -> BuildReport:
    """Write index.json per output folder, and splits.json with --split, and return the counts."""
    report = BuildReport()
    output = Path(options.output)
    report.removed_splits = remove_stale_splits(output, split_plans)
    split_entries = []
    for split_plan in split_plans:
        shard_results = [results[(str(plan.folder), plan.name)] for plan in split_plan.shards]
        records = [result["record"] for result in shard_results]
        skipped = split_plan.skipped + [entry for result in shard_results for entry in result["skipped"]]
        split_build = dict(build, split_name=split_plan.name) if split_plan.name else build
        index = shard_index.make_index(options.resolution, options.image_format, records, skipped, split_build)
        shard_index.remove_stale_shards(split_plan.folder, {plan.name for plan in split_plan.shards})
        shard_index.write_index(split_plan.folder, index)

        report.num_written += index["num_samples"]
        report.num_upsampled += index["num_upsampled"]
        report.num_shards += len(records)
        report.skipped_by_kind.update(entry["kind"] for entry in skipped)
        if split_plan.name:
            split_entries.append({"name": split_plan.name, "fraction": split_plan.fraction,
                                  "num_samples": index["num_samples"], "num_skipped": len(skipped)})

    if options.splits:
        shard_index.remove_stale_shards(output, set())
        (output / shard_index.INDEX_NAME).unlink(missing_ok=True)
        shard_index.write_splits(output, split_entries, build)
    else:
        (output / shard_index.SPLITS_NAME).unlink(missing_ok=True)
    return report


def remove_stale_splits(output: Path, split_plans: list[SplitPlan]) -> list[str]:
    """Delete the shard sets of earlier splits that this build does not write, and return their names.

    This covers a build without --split over an earlier split build, and a build whose split
    names differ from the earlier ones. Only files a build writes are deleted.
    """
    planned = {split_plan.name for split_plan in split_plans if split_plan.name}
    stale = [name for name in shard_index.find_split_folders(output) if name not in planned]
    for name in stale:
        shard_index.remove_shard_set(output / name)
    return stale
