#!/usr/bin/env bash
# Create the developer/CI virtualenv from requirements-dev.txt and make the
# collection resolvable as ner11.ops without Galaxy. Idempotent.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
venv=${VENV:-.venv}
py=${PYTHON:-python3}
stamp="$venv/.requirements.sha256"
want=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" >"$stamp"
fi

# ner11.ops for ansible-playbook, molecule and pytest: a collections path whose
# ansible_collections/ner11/ops points at this checkout.
mkdir -p .collections/ansible_collections/ner11
ln -sfn "$top" .collections/ansible_collections/ner11/ops

# ansible-test's pip bootstrap downloads from an unreachable host: place the
# offline stand-in in its cache (see scripts/get_pip_offline.py).
cache=~/.ansible/test/cache
mkdir -p "$cache"
for v in 24_2; do
  cmp -s scripts/get_pip_offline.py "$cache/get_pip_$v.py" || cp scripts/get_pip_offline.py "$cache/get_pip_$v.py"
done
echo "setup: $venv ready ($("$venv/bin/ansible" --version | sed -n 1p))"
