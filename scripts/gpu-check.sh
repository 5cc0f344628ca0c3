#!/usr/bin/env bash
# The GPU check: on a machine with a GPU, build llama-cli (release) with the GPU backends and
# run, on each of them and on flex (the CPU baseline):
#   1. `sanity` on stories260K against the forward fixture (atol 1e-5, rtol 1e-4);
#   2. 100 greedy tokens from stories260K, compared byte for byte with flex's;
#   3. greedy text from llama2.c's int8 export of stories260K (`--weight-dtype q8`: int8
#      products on the CPU backends, dequantized f32 weights on the GPU ones), compared with
#      what llama2.c's runq.c prints (the fixture generate-q80-stories260K.json);
#   4. `bench` on the 42M preset (random weights): decoding, prompting, a fine-tuning step.
# Then print one Markdown table for the README's *Performance* section.
#
# GPU backends: wgpu (always built) and tch-cuda when PyTorch 2.9.0 is importable by python3
# (libtorch from the pip wheel: LIBTORCH_USE_PYTORCH=1). A backend that cannot start gets a
# row saying why. Every command is bounded by `timeout`; after the build (a few minutes on
# 16 cores) the checks take about 3 minutes.
#
# Usage: scripts/gpu-check.sh [OUT_DIR]   (fixtures from LLAMA_FIXTURES, else ../shared/fixtures)
# With LLAMA_CLI=path/to/llama-cli the build is skipped and that binary is checked (a machine
# without Rust: build here with `cargo build --release -p llama-cli` and copy the binary).
set -uo pipefail
cd "$(dirname "$0")/.."

F=${LLAMA_FIXTURES:-../shared/fixtures}
OUT=${1:-gpu-check}
mkdir -p "$OUT"
if [ ! -f "$F/models/stories260K/stories260K.bin" ]; then
  echo "error: fixtures not found at $F (set LLAMA_FIXTURES)" >&2
  exit 1
fi

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
nproc

features=""
backends="flex wgpu"
if python3 -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.9.0") else 1)' 2>/dev/null; then
  features="--features tch"
  backends="$backends tch-cuda"
  export LIBTORCH_USE_PYTORCH=1
  LD_LIBRARY_PATH="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}"
  export LD_LIBRARY_PATH
else
  echo "note: PyTorch 2.9.0 not importable: tch-cuda is not built (pip install torch==2.9.0)"
fi

if [ -n "${LLAMA_CLI:-}" ]; then
  CLI=$LLAMA_CLI
  echo "== prebuilt $CLI"
else
  echo "== build (release${features:+, $features})"
  start=$(date +%s)
  # shellcheck disable=SC2086 # $features is one flag and its value, or nothing
  if ! cargo build --release -p llama-cli $features; then
    echo "error: the build failed" >&2
    exit 1
  fi
  echo "build took $(( $(date +%s) - start )) s"
  CLI=./target/release/llama-cli
fi
Q8=$F/models/stories260K/stories260K-q80.bin
# The runq.c text for the prompt whose int8 text differs from the f32 one.
python3 -c 'import json, sys
case = [c for c in json.load(open(sys.argv[1]))["cases"] if c["prompt"] == "The sun was"][0]
open(sys.argv[2], "w").write(case["runq_text"])' "$F/reference/generate-q80-stories260K.json" "$OUT/runq-the-sun-was.txt"

M=$F/models/stories260K/stories260K.bin

# `field KEY FILE`: a number from bench's JSON report, or "-".
field() {
  python3 -c 'import json, sys
v = json.load(open(sys.argv[2])).get(sys.argv[1])
print("-" if v is None else (f"{v:.3g}" if isinstance(v, float) else v))' "$1" "$2" 2>/dev/null || echo "-"
}

rows=()
for b in $backends; do
  echo "== $b"
  if timeout 120 $CLI --backend "$b" sanity --checkpoint "$M" \
      --reference "$F/reference/forward-stories260K.safetensors" > "$OUT/sanity-$b.txt" 2>&1; then
    sanity=pass
  else
    sanity="FAIL: $(grep -m1 -E 'error|differ' "$OUT/sanity-$b.txt" | cut -c1-80)"
  fi
  if timeout 120 $CLI --backend "$b" generate --checkpoint "$M" --temperature 0 \
      --max-new-tokens 100 --out "$OUT/greedy-$b.txt" > /dev/null 2> "$OUT/generate-$b.log"; then
    if [ "$b" = flex ]; then
      greedy="(baseline)"
    elif cmp -s "$OUT/greedy-$b.txt" "$OUT/greedy-flex.txt"; then
      greedy="identical"
    else
      greedy="DIFFERS"
    fi
  else
    greedy="FAIL: $(tail -1 "$OUT/generate-$b.log" | cut -c1-80)"
  fi
  # runq.c's text is the prompt and up to 116 new tokens: compare that much.
  if timeout 120 $CLI --backend "$b" generate --checkpoint "$Q8" --temperature 0 \
      --max-new-tokens 116 --prompt "The sun was" --out "$OUT/q8-$b.txt" > /dev/null 2> "$OUT/q8-$b.log"; then
    if python3 -c 'import sys
ours, runq = (open(p).read().rstrip("\n") for p in sys.argv[1:])
sys.exit(0 if ours.startswith(runq) else 1)' "$OUT/q8-$b.txt" "$OUT/runq-the-sun-was.txt"; then
      q8=identical
    else
      q8=DIFFERS
    fi
  else
    q8="FAIL: $(tail -1 "$OUT/q8-$b.log" | cut -c1-80)"
  fi
  json=$OUT/bench-$b.json
  if ! timeout 300 $CLI --backend "$b" bench --config configs/stories42M.json --runs 2 \
      --json "$json" > "$OUT/bench-$b.txt" 2>&1; then
    echo "bench on $b failed: $(tail -1 "$OUT/bench-$b.txt")"
    rm -f "$json"
  fi
  rows+=("| $b | $sanity | $greedy | $q8 | $(field decode_tokens_per_s "$json") | $(field prompt_sentences_per_s "$json") | $(field train_step_seconds "$json") | $(field train_peak_rss_mb "$json") |")
done

echo
echo "| backend | sanity (stories260K) | greedy 100 tokens vs flex | int8 export greedy vs runq.c | decode tok/s (42M) | prompting sent/s (42M, batch 10) | fine-tuning step s (42M, batch 80) | train peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
