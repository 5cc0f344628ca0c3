#!/usr/bin/env bash
# Decode speed side by side with llama2.c, in the same minutes, against the memory ceiling
# measured in those minutes. Run it before a change that touches the model, the allocator or
# loading, with the old and the new binary (LLAMA_CLI) one after the other.
#
#   scripts/perf-check.sh RUN RUNQ
#
# RUN and RUNQ: llama2.c's run.c and runq.c, built by hand outside this repository from its
# public source with its Makefile's `runomp` flags (-Ofast -fopenmp -march=native).
# Environment (all optional):
#   LLAMA_CLI      our release binary        [target/release/llama-cli]
#   LLAMA_SHARED   the shared folder          [../shared]: fixtures/ and reference-bench/
#   PERF_MODEL     a llama2.c v0 .bin         [a seeded random 42M model, made once in $PERF_DIR]
#   PERF_DIR       where models are written   [/tmp/llama-perf-check]
#   PERF_THREADS   thread counts              ["1 2"]
#   PERF_ROUNDS    alternating rounds         [2]
#   PERF_GROUP     int8 group size            [32]
#
# Each row runs both sides once, back to back, alternating which goes first from round to
# round, so that neither side always gets the quieter minute. The ceiling
# of a row is the streaming-read rate measured just before it (`llama-cli bench --bandwidth`,
# a buffer of at least 4x the last-level cache) divided by the bytes of the model file, which
# a decoded token reads once (the KV cache adds under 1% for the 42M shape at 256 positions).
set -euo pipefail

if [[ $# -ne 2 ]]; then
  sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
fi
RUN=$1
RUNQ=$2
for bin in "$RUN" "$RUNQ"; do
  [[ -x $bin ]] || { echo "perf-check: $bin is not an executable" >&2; exit 2; }
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLI=${LLAMA_CLI:-$ROOT/target/release/llama-cli}
SHARED=${LLAMA_SHARED:-$ROOT/../shared}
DIR=${PERF_DIR:-/tmp/llama-perf-check}
THREADS=${PERF_THREADS:-1 2}
ROUNDS=${PERF_ROUNDS:-2}
GROUP=${PERF_GROUP:-32}
TOKENIZER_BIN=$SHARED/fixtures/tokenizers/llama2-tokenizer.bin
[[ -x $CLI ]] || { echo "perf-check: no binary at $CLI (cargo build --release, or set LLAMA_CLI)" >&2; exit 2; }
[[ -f $TOKENIZER_BIN ]] || { echo "perf-check: no tokenizer at $TOKENIZER_BIN (set LLAMA_SHARED)" >&2; exit 2; }

mkdir -p "$DIR"
MODEL=${PERF_MODEL:-$DIR/stories42M-random.bin}
if [[ ! -f $MODEL ]]; then
  python3 "$SHARED/reference-bench/make_random_bin.py" --preset stories42M --out "$MODEL"
fi
QMODEL=$DIR/$(basename "$MODEL" .bin)-q80-g$GROUP.bin
if [[ ! -f $QMODEL || $QMODEL -ot $MODEL ]]; then
  python3 "$SHARED/reference-bench/make_q80_bin.py" "$MODEL" "$QMODEL" --group-size "$GROUP"
fi

# 256 positions on both sides: llama2.c's prompt is 5 tokens and -n counts the prompt.
PROMPT="Once upon a time"
POSITIONS=256

bandwidth() { # threads -> GB/s
  "$CLI" --threads "$1" bench --bandwidth | sed -n 's/^streaming read: \([0-9.]*\) GB\/s.*/\1/p'
}
ours() { # threads model -> decode tok/s
  "$CLI" --backend flex --threads "$1" bench --checkpoint "$2" --only generate --runs 3 --prompt-tokens 5 --new-tokens $((POSITIONS - 5)) \
    --json "$DIR/bench.json" >/dev/null 2>&1
  python3 -c 'import json,sys; print("%.1f" % json.load(open(sys.argv[1]))["decode_tokens_per_s"])' "$DIR/bench.json"
}
theirs() { # threads binary model -> achieved tok/s
  OMP_NUM_THREADS=$1 "$2" "$3" -z "$TOKENIZER_BIN" -t 0 -n $POSITIONS -i "$PROMPT" 2>&1 \
    | grep -o 'achieved tok/s: [0-9.]*' | sed 's/.*: //'
}

echo "perf-check $(date -u +%FT%TZ) on $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(nproc) cores"
echo "ours: $CLI (flex); llama2.c: $RUN, $RUNQ; model $MODEL; int8 group $GROUP"
printf '%-5s %-4s %-7s %8s %8s %6s %8s %8s %8s %6s %6s\n' \
  round row threads 'GB/s' ceiling 'MB' ours ref ratio 'ours%' 'ref%'
for round in $(seq 1 "$ROUNDS"); do
  for t in $THREADS; do
    for row in f32 int8; do
      if [[ $row == f32 ]]; then m=$MODEL; ref=$RUN; else m=$QMODEL; ref=$RUNQ; fi
      gbs=$(bandwidth "$t")
      if (( round % 2 == 1 )); then
        a=$(ours "$t" "$m"); b=$(theirs "$t" "$ref" "$m")
      else
        b=$(theirs "$t" "$ref" "$m"); a=$(ours "$t" "$m")
      fi
      python3 - "$round" "$row" "$t" "$gbs" "$(stat -c %s "$m")" "$a" "$b" <<'EOF'
import sys
round_, row, t, gbs, size, ours, ref = sys.argv[1:]
gbs, size, ours, ref = float(gbs), int(size), float(ours), float(ref)
ceiling = gbs * 1e9 / size
print(f"{round_:<5} {row:<4} {t:<7} {gbs:8.1f} {ceiling:8.1f} {size/1e6:6.0f} {ours:8.1f} {ref:8.1f} "
      f"{ours/ref:8.2f} {100*ours/ceiling:5.0f}% {100*ref/ceiling:5.0f}%")
EOF
    done
  done
done
echo "ratio = ours / llama2.c (higher is better); ceiling = GB/s / model bytes, in tokens/s"
