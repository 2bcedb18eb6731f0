#!/bin/sh
# Print the best real (non-shim) Python >= 3.12 present, else Debian's python3.
# ansible-core 2.20+ needs 3.12; plugin shebangs must never point at the pyenv shim.
for cand in python3.13 python3.12; do
  p=$(command -v "$cand" 2>/dev/null) || continue
  case "$p" in */.pyenv/shims/*) continue ;; esac
  echo "$p"; exit 0
done
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | sort -rV); do
    case "$v" in 3.1[2-9]*) p=$(PYENV_VERSION=$v pyenv which python3 2>/dev/null) && [ -x "$p" ] && { readlink -f "$p"; exit 0; } ;; esac
  done
fi
for p in /usr/bin/python3.12 /usr/bin/python3; do [ -x "$p" ] && { echo "$p"; exit 0; }; done
echo "no usable python3 found" >&2; exit 1
