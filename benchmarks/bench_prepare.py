"""Throughput of the prepare step: images per second, 1 worker vs all cores vs a plain loop.

    .venv/bin/python benchmarks/bench_prepare.py [--images 1000] [--classes 4] [--workers N] [--short-side 600]

Generates photo-like 1024x768 JPEGs (gradients plus noise, so they compress
like photos rather than like flat colour), then times

* plain:   one process; PIL open, convert RGB, resize the short side to
           ``--short-side`` with LANCZOS, JPEG encode as prepare stores
           (quality 95, 4:4:4), write a TFRecord (no validation, no splits,
           no report);
* prepare: ``prepare_dataset`` with 1 worker and with N workers (default: all cores);
* the plain loop in N processes at once, each on 1/N of the files: the
  per-core peer of N workers, on a machine shared the same way.

600 is prepare's own default short side (from 768 no reduced JPEG decode
applies: both sides do the same Lanczos work); 224 is what the pipeline
stores for its default 224 px model. prepare's whole run is timed, its
once-per-dataset work (listing, splits, report, gallery, writing) included,
which weighs less the more images there are. TensorFlow and kic's prepare
module are imported before any timing starts, so their import cost is not
counted against either side. "per core" compares CPU time per image (all
processes): on a shared machine it holds better than wall-clock rates.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import tempfile
import time

import numpy as np
from PIL import Image


def photo_like(seed: int, size=(1024, 768)) -> bytes:
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    colours = rng.uniform(0, 255, size=(3, 3)).astype(np.float32)
    image = colours[0] * (1 - x) * (1 - y) + colours[1] * x + colours[2] * y * (1 - x)
    image = image + rng.normal(0, 12, size=(height, width, 3)).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def generate(root: str, images: int, classes: int) -> list[tuple[str, int]]:
    files = []
    for index in range(images):
        label = index % classes
        path = os.path.join(root, f"class_{label}", f"{index:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(photo_like(index))
        files.append((path, label))
    return files


def cpu_seconds() -> tuple[float, float]:
    """CPU time of this process, and of its finished children (the pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def cpu_since(before: tuple[float, float]) -> tuple[float, float]:
    now = cpu_seconds()
    return now[0] - before[0], now[1] - before[1]


def _burn(units: int) -> int:
    total = 0
    for value in range(units):
        total += value * value
    return total


def available_parallelism(workers: int, units: int = 4_000_000) -> float:
    """Speed-up of a perfectly parallel CPU task with ``workers`` processes, now.

    On a shared machine other jobs take cores (and the kernel may share CPU per
    session, not per process), so this is the ceiling any parallel code can
    reach at the moment; prepare's speed-up is judged against it.
    """
    import multiprocessing

    start = time.perf_counter()
    for _ in range(workers):
        _burn(units)
    serial = time.perf_counter() - start
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_burn, [1] * workers)  # start-up not timed
        start = time.perf_counter()
        pool.map(_burn, [units] * workers)
        parallel = time.perf_counter() - start
    return serial / parallel


def plain_loop(files: list[tuple[str, int]], output: str, short_side: int) -> float:
    import tensorflow as tf

    from kic.data import schema
    from kic.data.images import JPEG_SUBSAMPLING

    start = time.perf_counter()
    with tf.io.TFRecordWriter(output) as writer:
        for path, label in files:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
            scale = short_side / min(rgb.size)
            if scale < 1:
                size = (round(rgb.width * scale), round(rgb.height * scale))
                rgb = rgb.resize(size, Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            rgb.save(buffer, "JPEG", quality=95, subsampling=JPEG_SUBSAMPLING)  # what prepare stores
            writer.write(schema.make_example(encoded=buffer.getvalue(), height=rgb.height, width=rgb.width,
                                             label=label, source=path, sha256=""))
    return time.perf_counter() - start


def _import_tensorflow() -> None:
    import tensorflow as tf  # noqa: F401


def _plain_share(share: tuple[list[tuple[str, int]], str, int]) -> tuple[float, float]:
    """One process's plain loop over its share of the files: (wall seconds, CPU seconds), after start-up."""
    files, output, short_side = share
    cpu = time.process_time()
    seconds = plain_loop(files, output, short_side)
    return seconds, time.process_time() - cpu


def plain_loops_at_once(files: list[tuple[str, int]], folder: str, short_side: int,
                        processes: int) -> tuple[float, float]:
    """The plain loop in ``processes`` processes at once, each on its share of
    the files: the per-core peer of prepare with that many workers, as it
    meets the same sharing of the machine (caches, memory bandwidth, and
    vCPUs that may be hyperthreads of one core). Returns (wall seconds, CPU
    seconds of the loops, their start-up not counted)."""
    import multiprocessing

    shares = [(files[index::processes], os.path.join(folder, f"plain-{index}.tfrecord"), short_side)
              for index in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes, initializer=_import_tensorflow) as pool:
        pool.map(_burn, [1] * processes)  # every process started and TensorFlow imported, untimed
        start = time.perf_counter()
        results = pool.map(_plain_share, shares, chunksize=1)
        seconds = time.perf_counter() - start
    return seconds, sum(cpu for _, cpu in results)


def run_prepare(source: str, output: str, workers: int, short_side: int) -> tuple[float, dict]:
    from kic.data.prepare import PrepareOptions, prepare_dataset

    start = time.perf_counter()
    result = prepare_dataset(PrepareOptions(source=source, output_dir=output, workers=workers,
                                            image_short_side=short_side))
    return time.perf_counter() - start, result.report["timing"]


def main() -> None:
    from kic.machine import available_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=available_cores())
    parser.add_argument("--short-side", type=int, default=600, help="what both sides store (600: prepare's default)")
    args = parser.parse_args()

    # Imported up front: import time is not what we measure.
    import tensorflow as tf  # noqa: F401

    import kic.data.prepare  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="kic-bench-") as folder:
        source = os.path.join(folder, "images")
        started = time.perf_counter()
        files = generate(source, args.images, args.classes)
        print(f"generated {len(files)} 1024x768 JPEGs in {time.perf_counter() - started:.1f}s")

        cpu = cpu_seconds()
        plain_seconds = plain_loop(files, os.path.join(folder, "plain.tfrecord"), args.short_side)
        rows = [("plain loop (1 process)", 1, plain_seconds, None)]
        split_cpus = [cpu_since(cpu)]
        for workers in sorted({1, args.workers}):
            cpu = cpu_seconds()
            seconds, timing = run_prepare(source, os.path.join(folder, f"out{workers}"), workers, args.short_side)
            split_cpus.append(cpu_since(cpu))
            rows.append((f"prepare, {workers} worker(s)", workers, seconds, timing))
        if args.workers > 1:
            many_plain_seconds, many_plain_cpu = plain_loops_at_once(files, folder, args.short_side, args.workers)
    cpus = [parent + children for parent, children in split_cpus]

    print(f"\n{args.images} 1024x768 JPEGs stored at a short side of {args.short_side}; per core: the plain "
          "loop's CPU time per image over this run's (all processes)")
    print(f"{'run':<26}{'workers':>8}{'seconds':>9}{'images/s':>10}{'per worker':>11}"
          f"{'normalize/s':>12}{'CPU ms/image':>13}{'per core':>10}")
    for (name, workers, seconds, timing), cpu in zip(rows, cpus, strict=True):
        rate = args.images / seconds
        normalize = f"{timing['images_per_s']:.1f}" if timing else "-"
        print(f"{name:<26}{workers:>8}{seconds:>9.2f}{rate:>10.1f}{rate / workers:>11.1f}{normalize:>12}"
              f"{1000 * cpu / args.images:>13.1f}{cpus[0] / cpu:>9.2f}x")
    plain_rate = args.images / rows[0][2]
    one_rate = args.images / rows[1][2]
    many_rate = args.images / rows[-1][2]
    ceiling = available_parallelism(rows[-1][1])
    print(f"\nspeed-up 1 -> {rows[-1][1]} workers: {many_rate / one_rate:.2f}x "
          f"(a perfectly parallel CPU task gets {ceiling:.2f}x on this machine right now); "
          f"prepare (1 worker) vs plain loop: {one_rate / plain_rate:.2f}x")
    workers = rows[-1][1]
    if workers > 1:
        many_plain_rate = args.images / many_plain_seconds
        print(f"plain loop in {workers} processes at once (each on 1/{workers} of the files): "
              f"{many_plain_rate:.1f} images/s, {many_plain_rate / workers:.1f} per process, "
              f"{1000 * many_plain_cpu / args.images:.1f} CPU ms/image; prepare with {workers} workers against it, "
              f"per core: {many_plain_cpu / cpus[-1]:.2f}x (CPU), {many_rate / many_plain_rate:.2f}x (wall)")
    cpu_one, cpu_many = cpus[1] / args.images, cpus[-1] / args.images
    print(f"CPU per image: {1000 * cpu_one:.1f} ms with 1 worker, {1000 * cpu_many:.1f} ms with "
          f"{workers} (pool overhead {100 * (cpu_many / cpu_one - 1):+.0f}%); "
          f"plain loop {1000 * cpus[0] / args.images:.1f} ms")
    # Wall time on idle cores is at most the parent's CPU (not overlapped at all) plus the
    # workers' CPU spread over the workers: a conservative projection.
    parent, children = split_cpus[-1]
    print(f"projected speed-up on {workers} idle cores: {cpus[1] / (parent + children / workers):.2f}x "
          f"(parent {1000 * parent / args.images:.1f} ms/image, workers "
          f"{1000 * children / args.images:.1f} ms/image)")


if __name__ == "__main__":
    main()
