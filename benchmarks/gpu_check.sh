#!/usr/bin/env bash
# The GPU check: one command, one GPU, under 8 minutes, one summary at the end.
#
#     bash benchmarks/gpu_check.sh [OUTPUT_FOLDER]        (default output/gpu_check)
#
# 1. benchmarks/throughput.py on CUDA: bf16 autocast, channels_last, batch 128, RandWire-C109
#    (reference / eager / fast / fast-lean; fast = the Triton node kernels after their self-check) vs ResNet-50, plus the detector backbones at 800x1333;
# 2. 20 iterations of tools/train_cls.py on configs/imagenet/randwire_ws_c109_regular.yaml with
#    AMP (bf16) and channels_last on generated ImageFolder data (5 classes, 256x256), then
#    evaluation;
# 3. 20 iterations of tools/train_net.py on configs/faster_rcnn_randwire_c109_fpn_1x.yaml with
#    AMP, initialised from step 2's checkpoint, on the embedded detection data, then COCO eval;
# 4. 10 iterations of step 2 with float16 AMP (the GradScaler path);
# 5. the benchmark again with torch.compile of both models (last: it may take minutes).
# Each step has its own time limit and the whole check GPU_CHECK_SECONDS (470), so a slow or
# failing step does not hide the others.
# PYTHON selects the interpreter (default .venv/bin/python); GPU_CHECK_SKIP names steps to skip
# (e.g. GPU_CHECK_SKIP="benchmark benchmark_compiled" reruns only the trainers).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT_DIR=${1:-output/gpu_check}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore

START=$(date +%s)
TOTAL=${GPU_CHECK_SECONDS:-470}  # the whole check's time; each step gets what is left, at most its own

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to OUT_DIR/NAME.log
    local name=$1 limit=$2 start rc left
    shift 2
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        echo "$name: skipped (GPU_CHECK_SKIP)" | tee -a "$SUMMARY"
        return 0
    fi
    left=$(( TOTAL - ($(date +%s) - START) ))
    if [ "$left" -lt 15 ]; then
        echo "$name: skipped (the check's $TOTAL s are spent)" | tee -a "$SUMMARY"
        return 0
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo "== $name (limit $limit s): $*"
    start=$(date +%s)
    timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$SUMMARY"
    [ $rc -eq 0 ] || tail -n 25 "$OUT_DIR/$name.log"
    return 0
}

step env 45 "$PY" -c "import torch, detectron2, randwire_d2; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), 'detectron2', detectron2.__version__)"

step benchmark 150 "$PY" benchmarks/throughput.py --device cuda --dtype bf16 --channels-last \
    --batch 128 --models rw-c109 r50 --modes reference eager fast fast-lean --rounds 5 --detector \
    --json "$OUT_DIR/benchmark.json"

DATA="$OUT_DIR/cls_data"
step cls_data 60 "$PY" -c "from randwire_d2.data.cls_demo import generate_classification_demo as g; g('$DATA', {'train': 128, 'val': 16}, image_size=256)"

# 5 x 128 images / 32 per step = 20 iterations in one epoch.
CLS_OPTS=(PRETRAIN.DATA_ROOT "$DATA" MODEL.CLASSIFIER.NUM_CLASSES 5 SOLVER.IMS_PER_BATCH 32
          PRETRAIN.EPOCHS 1 PRETRAIN.WARMUP_EPOCHS 0.25 PRETRAIN.TEST_CROPS "[224]"
          PRETRAIN.EVAL_PERIOD_EPOCHS 0.0 PRETRAIN.CHANNELS_LAST True SOLVER.AMP.ENABLED True
          DATALOADER.NUM_WORKERS 8)
step train_cls_bf16 100 "$PY" tools/train_cls.py --num-gpus 1 \
    --config-file configs/imagenet/randwire_ws_c109_regular.yaml "${CLS_OPTS[@]}" \
    PRETRAIN.AMP_DTYPE bfloat16 OUTPUT_DIR "$OUT_DIR/cls_bf16"
step train_net 120 "$PY" tools/train_net.py --num-gpus 1 \
    --config-file configs/faster_rcnn_randwire_c109_fpn_1x.yaml \
    MODEL.WEIGHTS "$OUT_DIR/cls_bf16/model_final.pth" \
    DATASETS.TRAIN '("randwire_demo_det_train",)' DATASETS.TEST '("randwire_demo_det_val",)' \
    MODEL.ROI_HEADS.NUM_CLASSES 5 SOLVER.IMS_PER_BATCH 8 SOLVER.BASE_LR 0.01 \
    SOLVER.MAX_ITER 20 SOLVER.STEPS "(15,)" SOLVER.WARMUP_ITERS 5 SOLVER.AMP.ENABLED True \
    SOLVER.CHECKPOINT_PERIOD 20 DATALOADER.NUM_WORKERS 8 OUTPUT_DIR "$OUT_DIR/det"

step train_cls_fp16 70 "$PY" tools/train_cls.py --num-gpus 1 \
    --config-file configs/imagenet/randwire_ws_c109_regular.yaml "${CLS_OPTS[@]}" \
    SOLVER.IMS_PER_BATCH 64 PRETRAIN.AMP_DTYPE float16 OUTPUT_DIR "$OUT_DIR/cls_fp16"

step benchmark_compiled 150 "$PY" benchmarks/throughput.py --device cuda --dtype bf16 \
    --channels-last --batch 128 --models rw-c109 r50 --modes fast compiled --rounds 3 \
    --memory none --json "$OUT_DIR/benchmark_compiled.json"

echo
echo "==================== GPU check summary ($OUT_DIR) ===================="
"$PY" - "$OUT_DIR" <<'EOF'
import json, os, re, sys
out = sys.argv[1]
print(open(os.path.join(out, "summary.txt")).read().rstrip())
for name in ("benchmark", "benchmark_compiled"):
    path = os.path.join(out, name + ".log")
    if os.path.exists(path):
        print(f"\n-- {name}")
        print("\n".join(l for l in open(path).read().splitlines() if l.startswith(("#", "|"))))
def last_metrics(folder):
    path = os.path.join(out, folder, "metrics.json")
    if not os.path.exists(path):
        return None
    lines = [json.loads(l) for l in open(path) if l.strip()]
    return [l for l in lines if "total_loss" in l or "loss_cls" in l]
for folder in ("cls_bf16", "cls_fp16", "det"):
    m = last_metrics(folder)
    if not m:
        print(f"\n-- {folder}: no metrics.json")
        continue
    last = m[-1]
    loss = {k: round(v, 4) for k, v in last.items() if "loss" in k}
    speed = {k: round(v, 3) for k, v in last.items() if k in ("time", "images_per_sec", "data_time")}
    print(f"\n-- {folder}: iteration {last.get('iteration')} {loss} {speed}")
    log = open(os.path.join(out, ("train_cls_" + folder[4:]) if folder.startswith("cls") else "train_net") + ".log").read()
    for pat in (r"top-1 .*", r"images/s: [\d.]+", r"copypaste: .*", r"Total training time: .*", r"max_mem: \d+M"):
        hits = re.findall(pat, log)
        if hits:
            print("   ", hits[-1] if "copypaste" not in pat else " / ".join(hits[-2:]))
EOF
