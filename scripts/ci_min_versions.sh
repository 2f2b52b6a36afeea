#!/usr/bin/env bash
# The version floors pyproject.toml declares, installed exactly, in a torch-free venv: validate and
# quantize a real bundle with them. Run by scripts/ci_device.sh (job "min") with its bundle;
# standalone: bash scripts/ci_min_versions.sh [BUNDLE] (without one, the main .venv exports it).
#
# Each floor is the first release that has what the code calls (checked in the released sources)
# and that runs the commands below; all of them have cp311 wheels on PyPI:
#   onnxruntime 1.27.0  quantize_static(calibration_cache_path=) (CalibStridedMinMax: 1.19);
#                       Requires-Python >= 3.11
#   openvino 2023.3.0   convert_model / save_model(compress_to_fp16) / infer(share_inputs,
#                       share_outputs) are 2023.1, but our IR uses opset13 ScaledDotProductAttention,
#                       which 2023.1 and 2023.2 cannot read
#   nncf 2.8.0          AdvancedSmoothQuantParameters(matmul=, convolution=)
#   onnx 1.16.0, numpy 1.24.0, ml_dtypes 0.2.0 (int4 / float8 that ORT's quantizer imports),
#   sympy 1.12, click 8.1.0, jsonschema 4.18.0: the declared floors
#   rich 13.5.2         our floor is 13, but nncf 2.8.0 requires rich>=13.5.2
#   cryptography 42.0.0 ed25519 sign / verify and raw key bytes (signed bundles); the floor we test
# Python 3.10 cannot have onnxruntime 1.27 (newest cp310 release: 1.23.2), so this job runs on
# python3 (3.11 here) only.
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/veca-ci-min.XXXXXX")}
mkdir -p "$WORK/logs"
read -r -a PY <<<"${PYTHON:-python3}"
FAILED=()
T0=$SECONDS

PINS=(
  onnxruntime==1.27.0
  openvino==2023.3.0
  nncf==2.8.0
  onnx==1.16.0
  numpy==1.24.0
  ml_dtypes==0.2.0
  sympy==1.12
  click==8.1.0
  rich==13.5.2
  jsonschema==4.18.0
  cryptography==42.0.0
)

say() { printf '%s\n' "$*"; }
check() {  # NAME CMD...: PASS when CMD exits 0 and printed no traceback (logs in $WORK/logs)
  local name=$1 rc=0 t=$SECONDS
  shift
  "$@" </dev/null >"$WORK/logs/$name.out" 2>"$WORK/logs/$name.err" || rc=$?
  if [ "$rc" -eq 0 ] && ! grep -q "^Traceback (most recent call last)" "$WORK/logs/$name.err"; then
    say "PASS min-$name ($((SECONDS - t)) s)"; return 0
  fi
  say "FAIL min-$name: exit $rc ($((SECONDS - t)) s): $*"
  tail -n 12 "$WORK/logs/$name.err" | sed 's/^/    | /'
  FAILED+=("$name"); return 1
}

BUNDLE=${1:-}
if [ -z "$BUNDLE" ]; then
  BUNDLE="$WORK/bundle"
  check export .venv/bin/veca-deploy export --elastic --precision fp32 --out "$BUNDLE" --force -q || exit 1
fi
printf '%s\n' "${PINS[@]}" >"$WORK/floors.txt"
V="$WORK/minenv"
install() {
  "${PY[@]}" -m venv "$V" &&
    "$V/bin/python" -m pip install -q --upgrade pip &&
    "$V/bin/python" -m pip install -q -c "$WORK/floors.txt" ".[device]"
}
if check install install; then
  # every pinned package must be installed at exactly its pin
  check pins "$V/bin/python" - "${PINS[@]}" <<'EOF'
import sys
from importlib.metadata import version
bad = [f"{p.split('==')[0]} {version(p.split('==')[0])} (pinned {p.split('==')[1]})" for p in sys.argv[1:]
       if version(p.split("==")[0]).split("-")[0] != p.split("==")[1]]
sys.exit("not at the floor: " + ", ".join(bad) if bad else 0)
EOF
  check no-torch "$V/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
  B="$WORK/bundle-min"
  rm -rf "$B" && cp -r "$BUNDLE" "$B"
  export VECA_CACHE_DIR="$WORK/cache"
  check validate "$V/bin/veca-deploy" validate "$B"
  # one fixed tier + the elastic graph (always included) keeps it quick; the same code paths
  check quantize "$V/bin/veca-deploy" quantize "$B" --precision int8 --calib fashion-mnist --calib-size 300 --tiers 8 -q
  check validate-int8 "$V/bin/veca-deploy" validate "$B"
  check keygen "$V/bin/veca-deploy" keygen --out "$WORK/keys" --force
  check sign "$V/bin/veca-deploy" sign "$B" --key "$WORK/keys/veca-signing.key"
  check validate-signed env VECA_PUBLIC_KEY="$WORK/keys/veca-signing.pub" "$V/bin/veca-deploy" validate "$B"
fi
say "== ci_min_versions: $((SECONDS - T0)) s"
if [ "${#FAILED[@]}" -gt 0 ]; then say "ci_min_versions FAILED: ${FAILED[*]} (logs in $WORK/logs)"; exit 1; fi
say "ci_min_versions PASSED"
