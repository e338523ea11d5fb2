#!/usr/bin/env bash
# What a GPU machine whose python3 lacks detectron2 needs to run the GPU checks.
#
#     bash benchmarks/gpu_wheels.sh              here, where pip reaches the package index:
#                                                the wheels into .whl/ (about 8 MB, git-ignored)
#     source benchmarks/gpu_wheels.sh --install  there (python3 3.12, torch, torchvision, numpy,
#                                                opencv, tensorboard present; no index): into
#                                                /tmp/site, put on PYTHONPATH
#
# detectron2's Python code comes from sal-detectron2 (a cp310 wheel, unpacked without its
# compiled _C and its top-level `tools` package, as the Makefile does); the rest are the pinned
# versions of requirements.txt, built as pure-Python wheels (fvcore and iopath ship sources only)
# plus pycocotools for CPython 3.12. benchmarks/gpu_check.sh installs them itself when .whl/
# exists and detectron2 does not import.
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
PURE=(fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 omegaconf==2.3.1 hydra-core==1.3.8
      antlr4-python3-runtime==4.9.3 termcolor==3.3.0)

if [ "${1:-}" = "--install" ]; then
    PY=${PYTHON:-python3}
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" $(ls "$WHEELS"/*.whl | grep -v sal_detectron2) || return 1 2> /dev/null || exit 1
    "$PY" - "$WHEELS" "$SITE" <<'PYEOF' || return 1 2> /dev/null || exit 1
import glob, sys, zipfile
wheels, site = sys.argv[1:]
(wheel,) = glob.glob(f"{wheels}/sal_detectron2-*.whl")
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("detectron2/") and "/_C" not in n]
    z.extractall(site, names)
print(f"detectron2's Python code ({len(names)} files) from {wheel} into {site}")
PYEOF
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    return 0 2> /dev/null || exit 0
fi

set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$WHEELS"
"$PY" -m pip wheel -q --no-deps -w "$WHEELS" "${PURE[@]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHEELS" pycocotools==2.0.11
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
    -d "$WHEELS" sal-detectron2==0.7.2
du -sh "$WHEELS"
ls "$WHEELS"
