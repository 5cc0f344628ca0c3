#!/usr/bin/env bash
# Runs the commands of the ```sh blocks of README.md and docs/overview.md (its tour of every
# command), so that the front pages and the tool cannot drift.
#
# The blocks are read from the two files themselves and run in order, line by line (a line ending in
# `\` continues on the next), by this one shell in one temporary folder, so `F=…` assignments
# and the files a line writes carry over to the next lines:
#   - `llama-cli …` and `./target/release/llama-cli …` run $LLAMA_CLI (default
#     ./target/release/llama-cli of this repository);
#   - `../shared/fixtures` becomes the fixtures folder ($LLAMA_FIXTURES, else the repository's
#     ../shared/fixtures), also exported as LLAMA_FIXTURES for `check`'s defaults;
#   - `cargo …` lines are skipped (this script checks a built binary), saying so;
#   - a line whose `--backend` cannot start here (not compiled in, no Vulkan driver, no CUDA
#     device) is skipped with the binary's own one-line reason;
#   - a `llama-cli serve …` line starts the server in the background and waits (60 s at
#     most) for its `listening on` line; the next lines (a `curl`) talk to it, and it is
#     stopped when the script ends;
#   - any other line that fails stops the script with a non-zero status, naming the line.
# The temporary folder is laid out like the exercise's (stories42M.pt, tokenizer.model,
# sanity-stories42M.safetensors, data/cfimdb-*), with stories260K standing in for stories42M
# and the 8 shortest reviews of each CFIMDB file for the whole file, as
# llama-cli/tests/exercise_folder.rs does, so the exercise's flagless commands run in seconds.
#
# Usage: scripts/readme-check.sh   (no arguments; build the binary first)
set -euo pipefail

here=$PWD
cd "$(dirname "$0")/.."
root=$PWD
if [ -n "${LLAMA_CLI:-}" ]; then
  cli=$(cd "$here" && realpath -m "$LLAMA_CLI")
else
  cli=$root/target/release/llama-cli
fi
fix=$(cd "$here" && realpath -m "${LLAMA_FIXTURES:-$root/../shared/fixtures}")
if [ ! -x "$cli" ]; then
  echo "error: no llama-cli at $cli: build it (cargo build --release -p llama-cli) or set LLAMA_CLI" >&2
  exit 1
fi
if [ ! -f "$fix/models/stories260K/stories260K.bin" ]; then
  echo "error: fixtures not found at $fix (set LLAMA_FIXTURES)" >&2
  exit 1
fi
export LLAMA_FIXTURES=$fix
echo "readme-check: $cli on the fixtures in $fix"

# The sh blocks as "FILE:LINE<tab>COMMAND", continuation lines joined.
mapfile -t entries < <(awk '
  /^```/ { in_sh = ($0 == "```sh"); next }
  in_sh {
    if (cont) line = line " " $0; else { line = $0; start = FILENAME ":" FNR }
    cont = sub(/[[:space:]]*\\$/, "", line)
    if (!cont) print start "\t" line
  }' README.md docs/overview.md)

# A folder laid out like the exercise's, from the fixtures.
work=$(mktemp -d "${TMPDIR:-/tmp}/readme-check.XXXXXX")
small=$fix/models/stories260K
ln -s "$small/stories260K.pt" "$work/stories42M.pt"
ln -s "$small/tok512.model" "$work/tokenizer.model"
ln -s "$fix/reference/forward-stories260K.safetensors" "$work/sanity-stories42M.safetensors"
mkdir "$work/data"
ln -s "$fix/data/cfimdb-label-mapping.json" "$work/data/cfimdb-label-mapping.json"
for split in train dev test; do
  # The 8 shortest reviews, in file order (the shortest training reviews hold both labels).
  awk '{ print length($0) "\t" NR "\t" $0 }' "$fix/data/cfimdb-$split.txt" |
    sort -t $'\t' -k1,1n -k2,2n | awk 'NR <= 8' | sort -t $'\t' -k2,2n |
    cut -f 3- > "$work/data/cfimdb-$split.txt"
done

# Whether a backend can start here: probed once with a quick sanity check. Only the failures
# that mean "not available" skip; any other failure is left to the command itself.
declare -A unavailable=()
probe() {
  local out
  if out=$("$cli" --backend "$1" sanity --checkpoint "$small/stories260K.bin" \
      --reference "$fix/reference/forward-stories260K.safetensors" 2>&1 </dev/null); then
    unavailable[$1]=""
    return
  fi
  case $out in
    *"not compiled into this binary"* | *"no GPU adapter found"* | *"no discrete GPU"* | *"sees no CUDA device"*)
      unavailable[$1]=$(printf '%s\n' "$out" | tail -n 1) ;;
    *) unavailable[$1]="" ;;
  esac
}

cargo_re='^([A-Za-z_][A-Za-z0-9_]*=[^[:space:]]*[[:space:]]+)*cargo([[:space:]]|$)'
cli_re='^(([A-Za-z_][A-Za-z0-9_]*=[^[:space:]]*[[:space:]]+)*)(\./target/release/)?llama-cli([[:space:]].*)?$'
backend_re='--backend[=[:space:]]+([a-z-]+)'
qcli=$(printf '%q' "$cli")
qfix=$(printf '%q' "$fix")
ran=0
skipped=0
cd "$work"
for entry in "${entries[@]}"; do
  where="${entry%%$'\t'*}"
  cmd=${entry#*$'\t'}
  cmd=${cmd#"${cmd%%[![:space:]]*}"}
  case $cmd in '' | '#'*) continue ;; esac
  if [[ $cmd =~ $cargo_re ]]; then
    echo "skip (a cargo command): $where: $cmd"
    continue
  fi
  line=${cmd//"../shared/fixtures"/"$qfix"}
  if [[ $line =~ $cli_re ]]; then
    line=${BASH_REMATCH[1]}$qcli${BASH_REMATCH[4]}
    if [[ $line =~ $backend_re ]]; then
      backend=${BASH_REMATCH[1]}
      [ -n "${unavailable[$backend]+set}" ] || probe "$backend"
      if [ -n "${unavailable[$backend]}" ]; then
        echo "skipped: $where: ${unavailable[$backend]}"
        skipped=$((skipped + 1))
        continue
      fi
    fi
  fi
  echo "== $where: $cmd"
  if [[ $cmd =~ llama-cli[[:space:]]+serve([[:space:]]|$) ]]; then
    # `exec`, so that $! is the server itself and the kill below reaches it.
    eval "exec $line" </dev/null >serve.out 2>serve.err &
    server=$!
    trap 'kill "$server" 2>/dev/null' EXIT
    for _ in $(seq 600); do
      grep -q '^listening on' serve.out && break
      kill -0 "$server" 2>/dev/null || break
      sleep 0.1
    done
    if ! grep -q '^listening on' serve.out; then
      echo "FAILED: $where: $cmd (the server did not start: $(tail -n 1 serve.err))" >&2
      exit 1
    fi
    ran=$((ran + 1))
    continue
  fi
  if ! eval "$line" </dev/null; then
    echo "FAILED: $where: $cmd (its folder is kept: $work)" >&2
    exit 1
  fi
  ran=$((ran + 1))
done
if [ -n "${server:-}" ]; then
  kill "$server" 2>/dev/null
  # Its status is SIGTERM's (143), not a failed line.
  wait "$server" 2>/dev/null || true
  trap - EXIT
fi
cd "$root"
rm -rf "$work"
echo "readme-check: all $ran lines passed ($skipped skipped)"
