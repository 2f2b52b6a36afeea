#!/usr/bin/env bash
# The main job on the built-in reference model, from a fresh machine:
# set up -> export 4 tiers (ONNX, OpenVINO FP32/FP16, INT8 calibrated on Fashion-MNIST, elastic ONNX)
# -> validate the bundle -> measure every tier here -> pick the best tier for a 5 ms budget.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-bundles/veca_tiny}
VD=.venv/bin/veca-deploy
$VD export --elastic --precision fp32,fp16,int8 --calib fashion-mnist --out "$OUT" --force
$VD inspect "$OUT"
$VD validate "$OUT"
$VD bench "$OUT" --count 200
$VD select "$OUT" --budget-ms 5
