#!/usr/bin/env python
"""Memory layout x precision: RandWire C78 / C109 / C154 vs ResNet-50 in NCHW and channels_last.

    python benchmarks/layouts.py --device cuda --batch 128                 # bf16 and fp16
    python benchmarks/layouts.py --device cpu --dtypes fp32 --batch 2 --rounds 1 \
        --models rw-c78 r50 --size 64                                      # a CPU smoke run

Every (model, layout, dtype) is one `throughput.Bench`: one inference batch (eval, no_grad) and
one training step (forward, cross-entropy, backward, SGD step) per round, rounds interleaved
over all variants in one process, medians over rounds. Each figure is also divided by
ResNet-50's in the same layout and dtype (and round). bf16 and fp16 run under autocast; fp16
training scales its loss with a GradScaler, as the trainer does (AMPTrainer). The last lines
name the fastest layout and dtype of each RandWire model's training, so that the defaults
(PRETRAIN.CHANNELS_LAST, PRETRAIN.AMP_DTYPE) can be chosen from the table.
"""

import argparse
import copy
import datetime
import json
import sys

import torch

from randwire_d2.utils.args import bounded_int  # noqa: E402
from randwire_d2.utils.tables import markdown_table  # noqa: E402

if __package__:  # python -m benchmarks.layouts
    from .bench_common import machine
    from .throughput import RANDWIRE, RESNETS, Bench, randwire, run
else:  # python benchmarks/layouts.py: its folder is sys.path[0]
    from bench_common import machine
    from throughput import RANDWIRE, RESNETS, Bench, randwire, run

LAYOUTS = {"nchw": "NCHW", "channels_last": "channels_last"}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class LayoutBench(Bench):
    """A Bench in one precision of DTYPES; fp16 training goes through a GradScaler."""

    def __init__(self, name, module, args):
        super().__init__(name, module, args)
        fp16 = args.dtype == "fp16" and args.device_type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    def autocast(self):
        dtype = DTYPES[self.args.dtype]
        return torch.autocast(self.args.device_type, dtype=dtype, enabled=dtype is not None)

    def train_step(self, x):
        self.module.train()
        with self.autocast():
            loss = self.loss(self.module(x))
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)


def variant_args(args, layout: str, dtype: str) -> argparse.Namespace:
    v = copy.copy(args)
    v.channels_last, v.dtype = layout == "channels_last", dtype
    return v


def build_benches(args):
    """LayoutBenches of every (model, layout, dtype), and each one's ResNet-50 baseline name."""
    benches, baseline = [], {}
    for name in args.models:
        for layout in args.layouts:
            for dtype in args.dtypes:
                torch.manual_seed(0)
                if name in RESNETS:
                    module = RESNETS[name]()
                else:
                    module = randwire(RANDWIRE[name], args.mode, args.device)
                label = f"{name} {LAYOUTS[layout]} {dtype}"
                benches.append(LayoutBench(label, module, variant_args(args, layout, dtype)))
                baseline[label] = f"r50 {LAYOUTS[layout]} {dtype}"
    return benches, baseline


def fastest_lines(rows) -> list:
    """One line per RandWire model (C109 first): its fastest training layout and dtype."""
    lines = []
    names = sorted({r["name"] for r in rows if r["name"] in RANDWIRE}, key=lambda n: n != "rw-c109")
    for name in names:
        mine = sorted((r for r in rows if r["name"] == name), key=lambda r: -r["train_ips"])
        best = mine[0]
        rest = "; ".join(f"{r['layout']} {r['dtype']} {r['train_ips']:.3g} img/s" for r in mine[1:])
        lines.append(
            f"fastest {name} training: {best['layout']} {best['dtype']} "
            f"({best['train_ips']:.3g} img/s, {best['train_ratio']:.2f}x ResNet-50)"
            + (f"; then {rest}" if rest else "")
        )
    return lines


def table(rows) -> str:
    header = ["model", "layout", "dtype", "inference img/s", "÷ ResNet-50", "training img/s"]
    # fmt: off
    return markdown_table(header + ["÷ ResNet-50"], [
        [r["name"], r["layout"], r["dtype"], f"{r['infer_ips']:.3g}", f"{r['infer_ratio']:.2f}",
         f"{r['train_ips']:.3g}", f"{r['train_ratio']:.2f}"]
        for r in rows
    ])
    # fmt: on


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=bounded_int(1, 4096), default=128)
    p.add_argument("--size", type=bounded_int(32, 4096), default=224)
    p.add_argument("--rounds", type=bounded_int(1, 1000), default=3)
    p.add_argument(
        "--warmup", type=bounded_int(0, 1000), default=1, help="untimed steps per variant first"
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=["rw-c78", "rw-c109", "rw-c154", "r50"],
        choices=sorted(RANDWIRE) + sorted(RESNETS),
    )
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        choices=list(DTYPES),
        help="default: bf16 fp16 on CUDA, fp32 on CPU",
    )
    p.add_argument(
        "--mode",
        default="fast",
        choices=["fast", "eager", "reference", "triton"],
        help="MODEL.RANDWIRE.EXECUTION of the RandWire models",
    )
    p.add_argument("--threads", type=bounded_int(1, 1024), default=None, help="torch threads (CPU)")
    p.add_argument("--json", default="", help="write the rows to this file")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_type = torch.device(args.device).type
    if args.device_type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.dtypes = args.dtypes or (["bf16", "fp16"] if args.device_type == "cuda" else ["fp32"])
    if "r50" not in args.models:
        args.models.append("r50")  # every ratio is to ResNet-50 in the same layout and dtype
    benches, baseline = build_benches(args)
    size = (args.size, args.size)
    rows = run(benches, baseline, args, size, args.batch)
    for row in rows:
        row["name"], row["layout"], row["dtype"] = row["model"].split(" ")
    date, host = datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), machine(args.device)
    print(
        f"# {host}, {date}; batch {args.batch}, {args.size}x{args.size}, RandWire "
        f"EXECUTION {args.mode}, {args.rounds} rounds interleaved, medians"
    )
    print(table(rows))
    fastest = fastest_lines(rows)
    print("\n".join(fastest))
    if args.json:
        out = {"machine": host, "date": date, "args": vars(args), "rows": rows}
        out["fastest"] = fastest
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
