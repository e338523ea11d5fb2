#!/usr/bin/env bash
# The GPU check of the pretrainer: one command, one GPU, under 8 minutes, one summary table last.
#
#     bash benchmarks/gpu_check.sh [--dry-run] [OUTPUT_FOLDER]     (default output/gpu_check)
#
# Steps (each time-limited; the whole check GPU_CHECK_SECONDS, default 470):
#   env            torch, CUDA, the GPU
#   cls_data       ImageNet-like JPEGs (500x375, quality 90; 8 classes x GPU_CHECK_IMAGES_PER_CLASS,
#                  default 1250: ~78 iterations per epoch at batch 128) in ImageFolder layout
#   loader         benchmarks/loader.py: decoded + augmented img/s, cpu/cuda decode, 8/16 workers
#   train_{default,best}_{32,128}
#                  benchmarks/train_step.py: tools/train_cls.py's step on RandWire-C109, end-to-end
#                  (real loader) and model-only (one batch repeated) img/s at batch 32 and 128,
#                  with the config's keys and with the best ones (BEST below); acceptance with
#                  BEST: end-to-end / model-only >= 0.85 at 128, >= 0.70 at 32
#   cuda_graphs    PRETRAIN.CUDA_GRAPHS True vs False, fp32, batch 32, no dropout / edge removal:
#                  speed and per-iteration losses (relative difference <= 1e-3)
#   profile        benchmarks/profile_step.py: one C109 training step (bf16, channels_last, 128)
#                  by kind of kernel, idle gaps included
#   det_*          tools/train_net.py, 2 images per GPU at 800x1333 (generated 480x800 images),
#                  AMP, random weights (learning rate 0, nothing frozen): RandWire-C109-FPN vs
#                  R-50-FPN, median s/iteration from metrics.json
#   layouts        benchmarks/layouts.py: NCHW / channels_last x bf16 / fp16, C78/C109/C154 vs R-50
#   compile        train_step.py with MODEL.RANDWIRE.COMPILE node vs eager: warm-up s and speed
#
# A step that passed in an earlier run of the check into the same OUTPUT_FOLDER is skipped when
# nothing it depends on changed: OUTPUT_FOLDER/<step>.stamp holds a hash of its command and of
# the files it depends on (git's list of the project's files when there is a .git, else every
# file under the named folders; the data steps' stamps for the steps that read their data).
# GPU_CHECK_FORCE=1 reruns every step; GPU_CHECK_SKIP="a b" skips steps a and b.
# PYTHON selects the interpreter (default .venv/bin/python; python3 on the GPU machine, where
# detectron2 and its requirements must be importable: its image lacks them). The repo's root is
# put on PYTHONPATH, so randwire_d2 need not be installed.
# --dry-run (or GPU_CHECK_DRY_RUN=1): every step on the CPU with tiny sizes (demo configs,
# batches of 2-4, 1-2 iterations; the CUDA-only keys left out, EXECUTION reference vs fast
# standing in for CUDA graphs vs eager), into output/gpu_check_dry: the plumbing, not numbers.

files_of() {  # files_of PATH...: the files a step depends on, sorted, one per line
    local p
    for p in "$@"; do
        if [ -f "$p" ] || [ ! -e "$p" ]; then
            echo "$p"
        elif git -C "$p" rev-parse --is-inside-work-tree > /dev/null 2>&1; then
            (cd "$p" && git ls-files --cached --others --exclude-standard) | sed "s|^|$p/|"
        else
            find "$p" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*'
        fi
    done | LC_ALL=C sort -u
}

deps_hash() {  # deps_hash PATH...: one hash of the contents of files_of PATH...
    local f
    files_of "$@" | while IFS= read -r f; do
        if [ -f "$f" ]; then
            echo "$f $(sha1sum < "$f" | cut -c1-40)"
        else
            echo "$f missing"
        fi
    done | sha1sum | cut -c1-40
}

init_check() {  # init_check OUT_DIR: the output folder and the clock of a run of the check
    OUT_DIR=$1
    mkdir -p "$OUT_DIR"
    OUT_DIR=$(cd "$OUT_DIR" && pwd)
    STATUS="$OUT_DIR/status.tsv"
    : > "$STATUS"
    START=$(date +%s)
    TOTAL=${GPU_CHECK_SECONDS:-470}
}

record() {  # record NAME STATUS SECONDS
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$STATUS"
    echo "$1: $2 ($3 s)"
}

# step NAME LIMIT "DEPS" COMMAND...: run COMMAND with a time limit (at most what is left of the
# check), output in OUT_DIR/NAME.log; it may write OUT_DIR/NAME.json and OUT_DIR/NAME/ (both
# removed first). DEPS: the files and folders it depends on ("" : always run, no stamp).
step() {
    local name=$1 limit=$2 deps=$3 start rc left key="" stamp="$OUT_DIR/$1.stamp"
    shift 3
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        record "$name" "skipped (GPU_CHECK_SKIP)" 0
        return 0
    fi
    if [ -n "$deps" ]; then
        # shellcheck disable=SC2086  # DEPS is a list of paths
        key=$({ printf '%s\n' "$@"; deps_hash $deps; } | sha1sum | cut -c1-40)
        if [ "${GPU_CHECK_FORCE:-0}" != 1 ] && [ "$(cat "$stamp" 2> /dev/null)" = "$key" ]; then
            record "$name" "passed before, unchanged: skipped" 0
            return 0
        fi
    fi
    left=$(( TOTAL - ($(date +%s) - START) ))
    if [ "$left" -lt 15 ]; then
        record "$name" "not run (the check's $TOTAL s are spent)" 0
        return 0
    fi
    [ "$limit" -le "$left" ] || limit=$left
    rm -rf "$stamp" "$OUT_DIR/$name.json" "${OUT_DIR:?}/$name"
    echo "== $name (limit $limit s): $*"
    start=$(date +%s)
    timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        [ -z "$key" ] || echo "$key" > "$stamp"
        record "$name" "passed" $(( $(date +%s) - start ))
    else
        [ $rc -eq 124 ] && rc="124: timed out after $limit s"
        record "$name" "FAILED (exit $rc)" $(( $(date +%s) - start ))
        tail -n 25 "$OUT_DIR/$name.log"
    fi
    return 0
}

# Sourced (the tests): the functions only.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    return 0
fi

set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_CHECK_DRY_RUN:-0}
if [ "${1:-}" = "--dry-run" ]; then
    DRY=1
    shift
fi
PY=${PYTHON:-.venv/bin/python}
# A GPU machine without detectron2: the wheels that benchmarks/gpu_wheels.sh put in .whl/.
if [ -d .whl ] && ! "$PY" -c "import detectron2" 2> /dev/null; then
    # shellcheck source=benchmarks/gpu_wheels.sh
    PYTHON=$PY source benchmarks/gpu_wheels.sh --install || exit 1
fi
if [ "$DRY" = 1 ]; then
    init_check "${1:-output/gpu_check_dry}"
else
    init_check "${1:-output/gpu_check}"
fi
# The repo importable where randwire_d2 is not installed (the GPU machine's python3).
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

DATA="$OUT_DIR/cls_data"
DET="$OUT_DIR/det_data"
TRAIN_DEPS="randwire_d2 tools/train_cls.py configs/imagenet benchmarks/train_step.py"
TRAIN_DEPS+=" benchmarks/bench_common.py"
TRAIN_DEPS+=" $OUT_DIR/cls_data.stamp"
MODEL_DEPS="randwire_d2 configs/imagenet benchmarks/throughput.py benchmarks/traffic.py"
MODEL_DEPS+=" benchmarks/bench_common.py"
DET_DEPS="randwire_d2 tools/train_net.py configs $OUT_DIR/det_data.stamp"
if [ "$DRY" = 1 ]; then
    CLASSES=2 PER_CLASS=12 VAL_PER_CLASS=2 DET_SIZE="(48, 80)" DET_IMAGES=4
    SMALL=2 LARGE=4 ITERS=2 WARMUP=1 DET_ITERS=4 DET_MIN=128 DET_MAX=213
    CLS_CONFIG=configs/demo/randwire_cls_demo.yaml
    CLS=(MODEL.DEVICE cpu MODEL.RANDWIRE.MEMORY_EFFICIENT False MODEL.RANDWIRE.NUM_NODES 6
         MODEL.RANDWIRE.CHANNELS 8 MODEL.CLASSIFIER.HEAD_CHANNELS 32 PRETRAIN.TEST_CROPS "[56]")
    BEST=(PRETRAIN.CHANNELS_LAST True SOLVER.AMP.ENABLED True PRETRAIN.AMP_DTYPE bfloat16
          DATALOADER.NUM_WORKERS 1)
    GRAPHS=(MODEL.RANDWIRE.EXECUTION reference fast)
    LOADER=(--workers 0 1 --decode cpu --batch 4 --crop 56 --batches 2)
    LAYOUTS=(--device cpu --dtypes fp32 --batch 2 --rounds 1 --models rw-c78 r50 --size 64)
    PROFILE=(--device cpu --batch 2 --size 64 --models rw-c78 --modes fast --steps 1)
    DET_OPTS=(MODEL.DEVICE cpu DATALOADER.NUM_WORKERS 0)
else
    CLASSES=8 PER_CLASS=${GPU_CHECK_IMAGES_PER_CLASS:-1250} VAL_PER_CLASS=16
    DET_SIZE="(480, 800)" DET_IMAGES=32
    SMALL=32 LARGE=128 ITERS=20 WARMUP=5 DET_ITERS=40 DET_MIN=800 DET_MAX=1333
    CLS_CONFIG=configs/imagenet/randwire_ws_c109_regular.yaml
    CLS=()
    BEST=(PRETRAIN.CHANNELS_LAST True SOLVER.AMP.ENABLED True PRETRAIN.AMP_DTYPE bfloat16
          PRETRAIN.CUDA_GRAPHS True PRETRAIN.DECODE cuda DATALOADER.NUM_WORKERS 12
          CUDNN_BENCHMARK True)
    GRAPHS=(PRETRAIN.CUDA_GRAPHS False True)
    LOADER=(--workers 8 16 --decode cpu cuda --batch 128 --batches 10)
    LAYOUTS=(--device cuda --batch 128 --rounds 2)
    PROFILE=(--device cuda --dtype bf16 --channels-last --batch 128 --models rw-c109
             --modes fast)
    DET_OPTS=(DATALOADER.NUM_WORKERS 4)
fi
CLS+=(PRETRAIN.DATA_ROOT "$DATA" MODEL.CLASSIFIER.NUM_CLASSES "$CLASSES")

step env 60 "" "$PY" -c "
import torch, detectron2, randwire_d2, os
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA'
print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, {gpu},', end=' ')
print(f'detectron2 {detectron2.__version__}, {os.cpu_count()} CPUs')"

step cls_data 120 "randwire_d2/data/cls_demo.py" "$PY" -c "
import os, shutil, sys
from multiprocessing import get_context
from randwire_d2.data.cls_demo import generate_jpeg_folder
root, classes, counts = '$DATA', $CLASSES, {'train': $PER_CLASS, 'val': $VAL_PER_CLASS}
def one(job):  # class c of a split, from seed c: the classes are generated in parallel
    split, c = job
    tmp = os.path.join(root, f'.tmp_{split}_{c}')
    generate_jpeg_folder(tmp, 1, counts[split], seed=c, splits=(split,))
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.replace(os.path.join(tmp, split, 'class_0'), os.path.join(root, split, f'class_{c}'))
    shutil.rmtree(tmp)
jobs = [(s, c) for s in counts for c in range(classes)]
with get_context('fork').Pool(min(len(jobs), os.cpu_count())) as pool:
    pool.map(one, jobs)
print(classes * counts['train'], 'training images,', classes * counts['val'], 'validation images')"

LOADER_DEPS="benchmarks/loader.py benchmarks/bench_common.py randwire_d2/data"
step loader 90 "$LOADER_DEPS $OUT_DIR/cls_data.stamp" \
    "$PY" benchmarks/loader.py --data "$DATA" "${LOADER[@]}" --json "$OUT_DIR/loader.json"

for keys in default best; do
    for batch in $SMALL $LARGE; do
        extra=()
        [ "$keys" = best ] && extra=("${BEST[@]}")
        step "train_${keys}_$batch" 90 "$TRAIN_DEPS" "$PY" benchmarks/train_step.py \
            --config-file "$CLS_CONFIG" --iters $ITERS --warmup $WARMUP \
            --json "$OUT_DIR/train_${keys}_$batch.json" "${CLS[@]}" SOLVER.IMS_PER_BATCH "$batch" \
            "${extra[@]}"
    done
done

step cuda_graphs 90 "$TRAIN_DEPS" "$PY" benchmarks/train_step.py --config-file "$CLS_CONFIG" \
    --iters $(( ITERS / 4 + 1 )) --warmup $(( WARMUP - 1 )) --runs model --compare "${GRAPHS[@]}" \
    --loss-tol 1e-3 --json "$OUT_DIR/cuda_graphs.json" "${CLS[@]}" SOLVER.IMS_PER_BATCH $SMALL \
    SOLVER.AMP.ENABLED False MODEL.CLASSIFIER.DROPOUT 0.0 MODEL.RANDWIRE.DROP_EDGE_PROB 0.0

step profile 60 "$MODEL_DEPS benchmarks/profile_step.py" "$PY" benchmarks/profile_step.py \
    "${PROFILE[@]}" --json "$OUT_DIR/profile.json"

step det_data 60 "randwire_d2/data/detection_demo.py" "$PY" -c "
from randwire_d2.data.detection_demo import generate_detection_demo
size, count = $DET_SIZE, {'train': $DET_IMAGES}
print(generate_detection_demo('$DET', count, image_size=size, object_size=(16, 40)))"

# No pretrained weights here: learning rate 0 (the same kernels, no divergence of the random
# trunks), nothing frozen, and R-50's input scaled to unit std (its config's PIXEL_STD of 1 is
# for the MSRA weights; random FrozenBN trunks then overflow float16).
DET_COMMON=(--dataset gpu_check_det "$DET/annotations/train.json" "$DET/train"
            DATASETS.TRAIN '("gpu_check_det",)' DATASETS.TEST '()' MODEL.WEIGHTS ''
            MODEL.BACKBONE.FREEZE_AT 0 MODEL.ROI_HEADS.NUM_CLASSES 5 SOLVER.IMS_PER_BATCH 2
            SOLVER.BASE_LR 0.0 SOLVER.MAX_ITER $DET_ITERS SOLVER.STEPS '()' SOLVER.WARMUP_ITERS 0
            SOLVER.AMP.ENABLED True SOLVER.CHECKPOINT_PERIOD 100000
            INPUT.MIN_SIZE_TRAIN "($DET_MIN,)" INPUT.MAX_SIZE_TRAIN $DET_MAX "${DET_OPTS[@]}")
step det_rw_c109 120 "$DET_DEPS" "$PY" tools/train_net.py --num-gpus 1 \
    --config-file configs/faster_rcnn_randwire_c109_fpn_1x.yaml "${DET_COMMON[@]}" \
    OUTPUT_DIR "$OUT_DIR/det_rw_c109"
step det_r50 120 "$DET_DEPS" "$PY" tools/train_net.py --num-gpus 1 \
    --config-file configs/faster_rcnn_R_50_FPN_1x.yaml "${DET_COMMON[@]}" \
    MODEL.PIXEL_STD "[57.375, 57.12, 58.395]" OUTPUT_DIR "$OUT_DIR/det_r50"

step layouts 120 "$MODEL_DEPS benchmarks/layouts.py" "$PY" benchmarks/layouts.py \
    "${LAYOUTS[@]}" --json "$OUT_DIR/layouts.json"

# Last: torch.compile's warm-up may take minutes.
step compile 150 "$TRAIN_DEPS" "$PY" benchmarks/train_step.py --config-file "$CLS_CONFIG" \
    --iters $(( ITERS / 2 )) --warmup $(( WARMUP - 2 > 1 ? WARMUP - 2 : 1 )) --runs model \
    --compare MODEL.RANDWIRE.COMPILE '' node --json "$OUT_DIR/compile.json" "${CLS[@]}" \
    SOLVER.IMS_PER_BATCH $SMALL

echo
[ "$DRY" = 1 ] && note=", DRY RUN on CPU" || note=""
echo "==================== GPU check summary ($OUT_DIR$note) ===================="
"$PY" - "$OUT_DIR" "$SMALL" "$LARGE" <<'EOF'
import json
import os
import sys

out, small, large = sys.argv[1:4]
rows = []  # (step, what, number, unit / ratio)


def load(name):
    path = os.path.join(out, name + ".json")
    return json.load(open(path)) if name in ok and os.path.exists(path) else None


def last_line(name):
    return open(os.path.join(out, name + ".log")).read().strip().splitlines()[-1]


status = {}
for line in open(os.path.join(out, "status.tsv")):
    name, state, seconds = line.rstrip("\n").split("\t")
    status[name] = state
    rows.append((name, "status", seconds, f"s, {state}"))
ok = {n for n, s in status.items() if s == "passed" or s.startswith("passed before")}

if "env" in ok:
    rows.append(("env", last_line("env"), "", ""))
if "cls_data" in ok:
    rows.append(("cls_data", "JPEGs 500x375 q90", last_line("cls_data").split()[0], "images"))
for r in (load("loader") or {}).get("rows", []):
    what = f"decode {r['decode']}, {r['workers']} workers"
    rows.append(("loader", what, f"{r['img_s']:.0f}", "img/s"))
for name in (f"train_{k}_{b}" for k in ("default", "best") for b in (small, large)):
    d = load(name)
    if not d:
        continue
    for r in d["runs"]:
        what = f"{r['run']} (warm-up {r['warmup_s']:.1f} s)"
        rows.append((name, what, f"{r['img_per_s']:.4g}", "img/s"))
    ratio, verdict = next(iter(d["ratios"].values())), ""
    if name.startswith("train_best"):
        need = 0.85 if name.endswith(f"_{large}") else 0.70
        verdict = f" (acceptance >= {need}: {'PASS' if ratio >= need else 'FAIL'})"
    rows.append((name, "end-to-end ÷ model-only", f"{ratio:.2f}", "ratio" + verdict))
for name in ("cuda_graphs", "compile"):
    d = load(name)
    if not d:
        continue
    for r in d["runs"]:
        what = f"{r['variant']} model-only (warm-up {r['warmup_s']:.1f} s)"
        rows.append((name, what, f"{r['img_per_s']:.4g}", "img/s"))
    cmp, (a, b) = d["compare"]["model-only"], [r["variant"] for r in d["runs"]]
    rows.append((name, f"{b} ÷ {a}", f"{cmp['speed_ratio']:.2f}", "ratio (img/s)"))
    what = f"largest relative loss difference, {cmp['iterations']} iterations"
    tol = ""
    if "within_tol" in cmp:
        tol = f", within tolerance: {'yes' if cmp['within_tol'] else 'NO'}"
    rows.append((name, what, f"{cmp['max_rel']:.2g}", "relative" + tol))
for res in (load("profile") or {}).get("results", []):
    wall_busy = f"{res['wall_ms']:.1f} / {res['busy_ms']:.1f}"
    rows.append(("profile", f"{res['model']}: step wall / busy", wall_busy, "ms"))
    for c, r in res["categories"].items():
        rows.append(("profile", c, f"{r['time']:.2f}", f"ms, {100 * r['share']:.1f}% of the step"))
    rows.append(("profile", "SGD step timed alone", f"{res['optimizer_step_ms']:.2f}", "ms"))
det = {}
for name in ("det_rw_c109", "det_r50"):
    path = os.path.join(out, name, "metrics.json")
    if name in ok and os.path.exists(path):
        lines = [json.loads(line) for line in open(path) if line.strip()]
        lines = [line for line in lines if "time" in line]
        if lines:
            det[name] = lines[-1]["time"]
            what = f"median s/iteration of <= 20 up to iteration {lines[-1]['iteration']}"
            rows.append((name, what, f"{det[name]:.3f}", "s/iter (metrics.json)"))
if len(det) == 2:
    ratio = f"{det['det_rw_c109'] / det['det_r50']:.2f}"
    rows.append(("det", "RandWire-C109-FPN ÷ R-50-FPN", ratio, "ratio (s/iter)"))
d = load("layouts")
if d:
    shown = "rw-c109" if any(r["name"] == "rw-c109" for r in d["rows"]) else None
    for r in d["rows"]:
        if r["name"] == shown or (shown is None and r["name"] != "r50"):
            what = f"{r['name']} {r['layout']} {r['dtype']} training"
            ratio = f"img/s ({r['train_ratio']:.2f}x ResNet-50)"
            rows.append(("layouts", what, f"{r['train_ips']:.4g}", ratio))
    for line in d["fastest"]:
        rows.append(("layouts", line.split(";")[0], "", ""))

print("| step | what | number | unit / ratio |")
print("|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(str(x) for x in r) + " |")
EOF
