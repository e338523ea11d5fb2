#!/usr/bin/env python
"""Training input pipeline throughput: decoded and augmented images per second of the
classification loaders, per decode path (PRETRAIN.DECODE) and data loader worker count.

    python benchmarks/loader.py --generate 2048                      # ImageNet-like JPEGs, temp
    python benchmarks/loader.py --data datasets/imagenet --workers 4 8 16 --decode cpu cuda
    python benchmarks/loader.py --generate 256 --workers 0 1 2 --decode cpu --batch 32 --batches 4

--data is an ImageFolder split folder (<class>/<image>) or a root holding one in train/.
--generate N writes N photo-like JPEGs of 500x375 at quality 90 (about 55..115 KB each,
ImageNet-like; `cls_demo.generate_jpeg_folder`, up to 10 classes) into --data, or into a temporary
folder removed afterwards; files already there are reused.

Paths:
    cpu     build_cls_train_loader: workers decode (PIL) and augment; timed up to the list of
            CHW uint8 tensors the trainer receives (no stacking, no copy to a device).
    cuda    build_cls_train_loader(decode_device="cuda"): workers read bytes, the main process decodes the
            batch with nvjpeg and crops, resizes and flips on the GPU; timed up to the uint8
            [B, 3, crop, crop] batch on the GPU (synchronized before the clock stops). Skipped,
            with a note, where CUDA is not available.

Each (path, workers) pair builds a fresh loader, takes one warm-up batch (worker start-up,
nvjpeg initialization), then times --batches batches: img/s = batch x batches / seconds. Workers
0 decodes in the main process, counted as one worker in "img/s per worker". Crops are
RandomResizedCrop (scale 0.08..1, as PRETRAIN.TRAIN_CROP_SCALE) of side --crop, seed 0. Few
batches with many workers read high: the workers prefetch while the warm-up batch is awaited.
--threads sets the main process's torch threads (the workers run one each, as DataLoader sets).
"""

import argparse
import datetime
import json
import os
import tempfile
import time
from typing import Dict, List

# First: importing randwire_d2 quiets the deprecation notes that Detectron2's imports print.
import randwire_d2  # noqa: F401  # isort: split
import torch
import torchvision

from randwire_d2.data.cls_demo import generate_jpeg_folder
from randwire_d2.data.cls_loaders import build_cls_train_loader
from randwire_d2.data.imagefolder import scan_image_folder
from randwire_d2.utils.args import bounded_int  # noqa: E402
from randwire_d2.utils.tables import markdown_table

if __package__:  # python -m benchmarks.loader
    from .bench_common import machine
else:  # python benchmarks/loader.py: its folder is sys.path[0]
    from bench_common import machine

DECODES = ("cpu", "cuda")
CROP_SCALE = (0.08, 1.0)


def generate(folder: str, count: int) -> str:
    """Write `count` JPEGs under folder/train (the largest class count <= 10 dividing it)."""
    classes = max(d for d in range(1, 11) if count % d == 0)
    generate_jpeg_folder(folder, classes, count // classes)
    return os.path.join(folder, "train")


def split_folder(data: str) -> str:
    train = os.path.join(data, "train")
    return train if os.path.isdir(train) else data


def time_loader(decode: str, samples, workers: int, args) -> float:
    """img/s of `args.batches` batches after one warm-up batch."""
    kwargs = dict(
        crop=args.crop,
        crop_scale=CROP_SCALE,
        global_batch=args.batch,
        seed=0,
        start_iter=0,
        max_iter=args.batches + 1,
        num_workers=workers,
    )
    loader = build_cls_train_loader(
        samples, decode_device="cuda" if decode == "cuda" else None, **kwargs
    )
    batches = iter(loader)
    next(batches)  # warm-up
    if decode == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    if decode == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del batches  # stops the workers
    return args.batch * args.batches / seconds


def table(rows: List[Dict]) -> str:
    header = ["decode", "workers", "img/s", "img/s per worker"]
    # fmt: off
    return markdown_table(header, [
        [r["decode"], r["workers"], f"{r['img_s']:.0f}", f"{r['img_s_per_worker']:.0f}"]
        for r in rows
    ], align="lrrr")
    # fmt: on


def run(args, folder: str) -> List[Dict]:
    _, samples = scan_image_folder(folder)
    if args.batch > len(samples):
        raise SystemExit(
            f"--batch {args.batch} is larger than the {len(samples)} images in {folder}"
        )
    sizes = [os.path.getsize(path) for path, _ in samples]
    # As tests/test_batched_decode.py reads it: torchvision, then "GPU: <name or none>; <date>".
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    info = f"{machine()}, torchvision {torchvision.__version__}, GPU: {gpu}; {date}"
    print(f"# {info}")
    print(
        f"# {len(samples)} images in {folder} (mean {sum(sizes) / len(sizes) / 1e3:.0f} KB); "
        f"batch {args.batch}, crop {args.crop}, {args.batches} timed batches after 1 warm-up"
    )
    rows = []
    for decode in args.decode:
        if decode == "cuda" and not torch.cuda.is_available():
            print("# decode cuda: skipped, CUDA is not available on this machine")
            continue
        for workers in args.workers:
            img_s = time_loader(decode, samples, workers, args)
            rows.append(
                dict(
                    decode=decode,
                    workers=workers,
                    img_s=img_s,
                    img_s_per_worker=img_s / max(1, workers),
                )
            )
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="", help="ImageFolder split folder, or a root with train/")
    p.add_argument(
        "--generate",
        type=bounded_int(0, 1_000_000),
        default=0,
        metavar="N",
        help="write N JPEGs first",
    )
    p.add_argument("--workers", type=bounded_int(0, 256), nargs="+", default=[0, 1, 2, 4, 8])
    p.add_argument("--decode", nargs="+", default=["cpu", "cuda"], choices=DECODES)
    p.add_argument("--batch", type=bounded_int(1, 4096), default=128)
    p.add_argument("--crop", type=bounded_int(1, 4096), default=224)
    p.add_argument(
        "--batches", type=bounded_int(1, 100_000), default=10, help="timed batches per row"
    )
    p.add_argument(
        "--threads",
        type=bounded_int(0, 1024),
        default=0,
        help="main-process torch threads (0: as is)",
    )
    p.add_argument("--json", default="", help="write the machine and the rows to this file")
    args = p.parse_args(argv)
    if not args.data and args.generate < 1:
        p.error("give --data DIR, --generate N (N >= 1), or both")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not args.generate:
        return run(args, split_folder(args.data))
    if args.data:
        return run(args, generate(args.data, args.generate))
    with tempfile.TemporaryDirectory(prefix="loader_bench_") as folder:
        return run(args, generate(folder, args.generate))


if __name__ == "__main__":
    main()
