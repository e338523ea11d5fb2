#!/usr/bin/env python
"""Pictures of a config's stage wirings (or of a checkpoint's), as in Fig. 1 / Fig. 4.

    python tools/draw_wiring.py --config-file configs/imagenet/randwire_ws_c109_regular.yaml \
        --output output/wiring_c109.png [--layout ring] [--save-wiring output/wiring_c109.json]
    python tools/draw_wiring.py --checkpoint output/cls/model_final.pth --output wiring.png
"""

import argparse
import os

from randwire_d2.checkpoint import wiring_of_checkpoint
from randwire_d2.config import load_config
from randwire_d2.modeling import wiring_from_cfg
from randwire_d2.utils.quiet_warnings import quiet_third_party_warnings
from randwire_d2.visualize import draw_network


def main(argv=None):
    quiet_third_party_warnings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--config-file", metavar="FILE")
    src.add_argument("--checkpoint", metavar="FILE", help="a randwire_d2 checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="PNG path")
    parser.add_argument("--layout", default="layered", choices=["layered", "ring"])
    parser.add_argument(
        "--save-wiring", default="", help="also write the wiring JSON (WIRING_FILE)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    if args.checkpoint:
        wiring = wiring_of_checkpoint(args.checkpoint)
    else:
        wiring = wiring_from_cfg(load_config(args.config_file, args.opts))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    print(wiring)
    print("wrote", draw_network(wiring, args.output, args.layout))
    if args.save_wiring:
        wiring.save(args.save_wiring)
        print("wrote", args.save_wiring)


if __name__ == "__main__":
    main()
