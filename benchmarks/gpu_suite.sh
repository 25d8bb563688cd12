#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md "On a GPU" in one call: environment, the
# loss check against the official update, ms/iter, images/s, peak memory and MFU of the
# official, faithful and fast updates at NF 64 and 32, the fast update at a larger batch and
# compiled (each of COMPILE_MODES), and a profile of the fast update. Each run is capped by
# TIMEOUT seconds and all of them by BUDGET, so that a slow row costs itself, not the call,
# and the suite fits one 10-minute call (a plain row takes about half a minute on one H100).
#
#   bash benchmarks/gpu_suite.sh                          # our modes only
#   OFFICIAL=../text2image bash benchmarks/gpu_suite.sh   # plus the official update and --check
#
# Settings (environment): DEVICE (cuda), BATCH (24), BIG_BATCH (64; 0 skips), SIZE (256),
# NFS ("64 32"), ITERS (10), WARMUP (3), PEAK_TFLOPS (989: H100/H200 dense bf16),
# COMPILE_MODES ("default reduce-overhead": torch.compile modes of the fast rows; "" skips),
# TIMEOUT (240: one run at most), BUDGET (540: all runs, seconds; rows that would start
# later are skipped, in the order: loss check, NF 64 fast/faithful/official, NF 32, larger
# batch, compiled, profile), OFFICIAL (a clone of the official repository; its code needs easydict,
# installed from WHEELS, a folder of wheels, when missing), OUT (where results go; default
# $OUT when set, else benchmarks/results/suite-<date>).
# Results: OUT/results.jsonl (one line per run, with a "run" name), OUT/profile.txt,
# OUT/log.txt (stderr of every run); a table of the rows last on stdout.
set -u
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda} BATCH=${BATCH:-24} BIG_BATCH=${BIG_BATCH:-64} SIZE=${SIZE:-256}
NFS=${NFS:-"64 32"} COMPILE_MODES=${COMPILE_MODES-"default reduce-overhead"}
ITERS=${ITERS:-10} WARMUP=${WARMUP:-3} PEAK_TFLOPS=${PEAK_TFLOPS:-989}
TIMEOUT=${TIMEOUT:-240} OFFICIAL=${OFFICIAL:-} WHEELS=${WHEELS:-.wheels}
OUT=${OUT:-benchmarks/results/suite-$(date +%Y%m%d-%H%M%S)} BUDGET=${BUDGET:-540}
DEADLINE=$(( $(date +%s) + BUDGET ))
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl LOG=$OUT/log.txt
: >"$RESULTS"; : >"$LOG"
export PYTHONUNBUFFERED=1

{ date -u; nvidia-smi -L 2>/dev/null || echo 'no nvidia-smi'
  python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"cudnn", torch.backends.cudnn.version(), "devices", torch.cuda.device_count())'; } 2>&1 | tee -a "$LOG"

if [ -n "$OFFICIAL" ] && ! python -c 'import easydict' 2>/dev/null; then
    pip install --no-index --find-links "$WHEELS" easydict >>"$LOG" 2>&1 \
        || echo "easydict is missing and not in $WHEELS: the official rows will fail" | tee -a "$LOG"
fi

# run NAME ARGS...: one benchmark process; its JSON lines go to RESULTS tagged with NAME
run() {
    local name=$1; shift
    echo "== $name: $*" >>"$LOG"
    local left=$(( DEADLINE - $(date +%s) )) limit=$TIMEOUT lines
    if [ "$left" -lt 20 ]; then
        echo "{\"run\": \"$name\", \"skipped\": \"BUDGET spent\"}" >>"$RESULTS"; return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    lines=$(timeout "$limit" python benchmarks/train_step.py --device "$DEVICE" --size "$SIZE" "$@" 2>>"$LOG")
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "{\"run\": \"$name\", \"failed\": $rc}" >>"$RESULTS"
        echo "$name: exit $rc (see log.txt)" >&2
        return
    fi
    printf '%s\n' "$lines" | python -c '
import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        print(json.dumps({"run": sys.argv[1], **json.loads(line)}))' "$name" >>"$RESULTS"
}

TIMING=(--iters "$ITERS" --warmup "$WARMUP" --flops --peak-tflops "$PEAK_TFLOPS")
first_nf=${NFS%% *}
if [ -n "$OFFICIAL" ]; then
    run "check-nf$first_nf" --nf "$first_nf" --batch "$BATCH" --iters 3 --check --official-repo "$OFFICIAL"
fi
for nf in $NFS; do
    run "fast-nf$nf" --nf "$nf" --batch "$BATCH" --mode fast "${TIMING[@]}"
    run "faithful-nf$nf" --nf "$nf" --batch "$BATCH" --mode faithful "${TIMING[@]}"
    if [ -n "$OFFICIAL" ]; then
        run "official-nf$nf" --nf "$nf" --batch "$BATCH" --mode official --official-repo "$OFFICIAL" "${TIMING[@]}"
    fi
done
if [ "$BIG_BATCH" -gt 0 ]; then
    run "fast-nf$first_nf-batch$BIG_BATCH" --nf "$first_nf" --batch "$BIG_BATCH" --mode fast "${TIMING[@]}"
fi
for mode in $COMPILE_MODES; do
    run "fast-compile-$mode-nf$first_nf" --nf "$first_nf" --batch "$BATCH" --mode fast "${TIMING[@]}" \
        --set TRAIN.FAST_OPTIONS.COMPILE=True TRAIN.FAST_OPTIONS.COMPILE_MODE="$mode"
done
left=$(( DEADLINE - $(date +%s) ))
if [ "$left" -ge 20 ]; then
    echo "== profile: fast, NF $first_nf" >>"$LOG"
    timeout "$left" python benchmarks/train_step.py --device "$DEVICE" --size "$SIZE" --nf "$first_nf" \
        --batch "$BATCH" --mode fast --iters 1 --warmup "$WARMUP" --profile 30 \
        >>"$LOG" 2>"$OUT/profile.txt" || echo "profile: failed (see profile.txt)" >&2
else
    echo "profile: skipped, BUDGET spent" >&2
fi

python - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'run':28} {'ms/iter':>9} {'img/s':>8} {'GPU MiB':>9} {'TFLOP/img':>10} {'TFLOP/s':>8} {'MFU':>7}")
for r in rows:
    if 'failed' in r:
        print(f"{r['run']:28} failed: exit {r['failed']}")
    elif 'skipped' in r:
        print(f"{r['run']:28} skipped: {r['skipped']}")
    elif 'iteration' in r:
        print(f"{r['run']:28} iteration {r['iteration']}: max |official - ours| = {r['max_abs_diff']:.3g}")
    else:
        mfu = f"{100 * r['mfu']:.1f} %" if 'mfu' in r else '-'
        print(f"{r['run']:28} {r['ms_per_iter']:9.1f} {r['images_per_s']:8.1f} {r.get('peak_gpu_mb', 0):9.0f} "
              f"{r.get('tflop_per_image', 0):10.3f} {r.get('achieved_tflops', 0):8.1f} {mfu:>7}")
EOF
echo "results: $RESULTS"
