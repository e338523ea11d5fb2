#!/usr/bin/env python
"""Convert a RandWireClassifier checkpoint (tools/train_cls.py) into detector weights.

    python tools/convert_cls_to_d2.py model_final.pth randwire_c109_d2.pth

Prints every `old -> new` key, the keys it drops (the classifier head, training state) and the
config lines that make the detector normalize images as the pretraining did. The output keeps
the wiring and its fingerprint and loads with torch.load(..., weights_only=True); give it to
tools/train_net.py as MODEL.WEIGHTS. (MODEL.WEIGHTS also accepts the classifier checkpoint
directly: the same mapping is then done on load.)
"""

import argparse

from randwire_d2.checkpoint import config_lines, convert_classifier_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("input", help="RandWireClassifier checkpoint (.pth)")
    parser.add_argument("output", help="detector weights to write (.pth)")
    parser.add_argument(
        "--prefix",
        default="backbone.bottom_up.",
        help="where the trunk sits in the detector (default: FPN's bottom_up)",
    )
    args = parser.parse_args(argv)

    out, mapped, dropped = convert_classifier_checkpoint(args.input, args.output, args.prefix)
    for old, new in mapped:
        print(f"{old} -> {new}")
    print(f"\nConverted {len(mapped)} tensors; dropped {len(dropped)} entries:")
    for key in dropped:
        print(f"  {key}")
    print(f"\nWiring fingerprint {out['wiring_fingerprint']} is kept; the detector must be built")
    print("with the same wiring (MODEL.RANDWIRE.* keys or WIRING_FILE) or loading fails.")
    lines = config_lines(out)
    if lines:
        print("Set these config lines (the pretraining's input normalization):")
        for line in lines:
            print(f"  {line}")
    else:
        print("The checkpoint records no input normalization: set MODEL.PIXEL_MEAN/PIXEL_STD and")
        print("INPUT.FORMAT to those used in pretraining.")
    print(f"\nWrote {args.output}")


if __name__ == "__main__":
    main()
