#!/usr/bin/env python
"""Training input pipeline throughput: decoded and augmented img/s of the classification loaders
per decode path (PRETRAIN.DECODE) and data loader worker count.

    python benchmarks/loader.py --generate 2048                      # ImageNet-like JPEGs, temp
    python benchmarks/loader.py --data datasets/imagenet --workers 4 8 16 --decode cpu cuda
    python benchmarks/loader.py --generate 256 --workers 0 1 2 --decode cpu --batch 32 --batches 4

--data: an ImageFolder split or a root with train/; --generate N writes N 500x375 JPEGs there
(or in a temporary folder). cpu: workers decode (PIL) and augment; cuda: nvjpeg and GPU crops in
the main process (skipped without CUDA). One warm-up batch, then --batches timed batches.
"""

import argparse
import datetime
import json
import os
import tempfile
import time

import torch
import torchvision

from randwire_d2.data.cls_demo import generate_jpeg_folder
from randwire_d2.data.cls_loaders import build_cls_train_loader
from randwire_d2.data.imagefolder import scan_image_folder
from randwire_d2.utils.args import bounded_int

if __package__:  # python -m benchmarks.loader
    from .bench_common import machine, table
else:  # python benchmarks/loader.py: its folder is sys.path[0]
    from bench_common import machine, table


def generate(folder: str, count: int) -> str:
    """Write `count` JPEGs under folder/train (the largest class count <= 10 dividing it)."""
    classes = max(d for d in range(1, 11) if count % d == 0)
    generate_jpeg_folder(folder, classes, count // classes)
    return os.path.join(folder, "train")


def time_loader(decode: str, samples, workers: int, args) -> float:
    """img/s of `args.batches` batches after one warm-up batch."""
    loader = build_cls_train_loader(
        samples, crop=args.crop, crop_scale=(0.08, 1.0), global_batch=args.batch, seed=0,
        start_iter=0, max_iter=args.batches + 1, num_workers=workers,
        decode_device="cuda" if decode == "cuda" else None,
    )  # fmt: skip
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


def run(args, folder: str):
    _, samples = scan_image_folder(folder)
    if args.batch > len(samples):
        raise SystemExit(
            f"--batch {args.batch} is larger than the {len(samples)} images in {folder}"
        )
    kb = sum(os.path.getsize(path) for path, _ in samples) / len(samples) / 1e3
    # As tests/test_batched_decode.py reads it: torchvision, then "GPU: <name or none>; <date>".
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    info = f"{machine()}, torchvision {torchvision.__version__}, GPU: {gpu}; {date}"
    print(f"# {info}")
    print(
        f"# {len(samples)} images in {folder} (mean {kb:.0f} KB); batch {args.batch}, crop "
        f"{args.crop}, {args.batches} timed batches after 1 warm-up"
    )
    rows = []
    for decode in args.decode:
        if decode == "cuda" and not torch.cuda.is_available():
            print("# decode cuda: skipped, CUDA is not available on this machine")
            continue
        for workers in args.workers:
            img_s = time_loader(decode, samples, workers, args)
            rows.append(dict(decode=decode, workers=workers, img_s=img_s))
            rows[-1]["img_s_per_worker"] = img_s / max(1, workers)
    header = ["decode", "workers", "img/s", "img/s per worker"]
    # fmt: off
    print(table(header, [
        [r["decode"], r["workers"], f"{r['img_s']:.0f}", f"{r['img_s_per_worker']:.0f}"]
        for r in rows
    ], align="lrrr"))
    # fmt: on
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="", help="ImageFolder split folder, or a root with train/")
    p.add_argument("--generate", type=bounded_int(0, 1_000_000), default=0, metavar="N")
    p.add_argument("--workers", type=bounded_int(0, 256), nargs="+", default=[0, 1, 2, 4, 8])
    p.add_argument("--decode", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    p.add_argument("--batch", type=bounded_int(1, 4096), default=128)
    p.add_argument("--crop", type=bounded_int(1, 4096), default=224)
    p.add_argument("--batches", type=bounded_int(1, 100_000), default=10, help="timed batches")
    p.add_argument("--threads", type=bounded_int(0, 1024), default=0, help="0: as is")
    p.add_argument("--json", default="", help="write the machine and the rows to this file")
    args = p.parse_args(argv)
    if not args.data and args.generate < 1:
        p.error("give --data DIR, --generate N (N >= 1), or both")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not args.generate:
        train = os.path.join(args.data, "train")
        return run(args, train if os.path.isdir(train) else args.data)
    if args.data:
        return run(args, generate(args.data, args.generate))
    with tempfile.TemporaryDirectory(prefix="loader_bench_") as folder:
        return run(args, generate(folder, args.generate))


if __name__ == "__main__":
    main()
