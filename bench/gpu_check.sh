#!/usr/bin/env bash
# The engine's GPU check, for the device machine (its own python3, jax and CUDA; no network):
#   bash bench/gpu_check.sh [VECTOR ...]
# installs this checkout (no dependencies) under /tmp/site, then: the device's int8 dots against NumPy;
# each vector (default: the committed ones) replayed on the GPU; the per-op divergence and the backward
# sub-steps of any vector that mismatched; the engine benchmark. Vectors made on a CPU machine, e.g.
#   bws engine vector --model mlp:784-512-256-10 --batch 1024 --seed 1 --out .devcarry/mlp1024.vec
# travel in an ignored folder named in the device tool's `carry`. Everything printed also goes to $OUT.
set -u
export PYTHONUNBUFFERED=1
[ -n "${OUT:-}" ] && exec > >(tee "$OUT/gpu_check.log") 2>&1
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi -L
python3 -c "import jax, jaxlib, numpy; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'numpy', numpy.__version__, jax.devices())"
echo "== int8 dots"; timeout 90 python3 bench/device_divergence.py --dots; echo "rc=$?"
vectors=("$@"); [ ${#vectors[@]} -eq 0 ] && vectors=(tests/engine/vectors/*.vec)
mismatched=()
for v in "${vectors[@]}"; do
  echo "== replay on the GPU: $v"
  timeout 120 python3 -c 'import sys; from bws.node.cli import main; sys.exit(main())' replay "$v" --json
  rc=$?; echo "rc=$rc"; [ $rc -ne 0 ] && mismatched+=("$v")
done
if [ ${#mismatched[@]} -gt 0 ]; then
  echo "== per-op divergence"; timeout 200 python3 bench/device_divergence.py "${mismatched[@]}"
  echo "== backward sub-steps"; timeout 200 python3 bench/device_divergence.py --steps "${mismatched[@]}"
fi
echo "== bench"; timeout 240 python3 bench/engine.py --quick --skip-quality; echo "rc=$?"
echo "mismatched: ${#mismatched[@]} of ${#vectors[@]} ${mismatched[*]}"
