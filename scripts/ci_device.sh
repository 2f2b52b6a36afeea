#!/usr/bin/env bash
# The device side as it ships (issue 13): no torch on the device. A venv made from the project's
# own files only (pip install ".[device]") runs every bundle command of the CLI on a real bundle.
#
#   export   the main .venv (torch) exports the built-in 28x28 model: elastic + 4 tiers, FP32
#   py311    a torch-free venv (python3): `import torch` must fail; then inspect, validate, bench,
#            select, eval, quantize (INT8, Fashion-MNIST calibration), validate again, check-trt,
#            and build-trt, which must exit 7 with one line on stderr (no TensorRT here)
#   py310    the same under Python 3.10 (JetPack 6's Python) with ".[device,jetson]" (docs/jetson.md's
#            install line), plus the device-side test modules
#            (their bundle fixtures are exported by the main venv; a test that itself needs torch
#            skips); SKIP with the reason when python3.10 is not found
#   min      scripts/ci_min_versions.sh: the declared version floors, validate + quantize
#
# docs/jetson.md's install recipe is make_device_venv below, command for command: keep them in sync.
# Prints PASS / FAIL / SKIP per step with its wall time; exits 1 if any step failed.
# Environment: WORK=DIR (default: a new temp dir, removed when everything passed unless KEEP=1),
# PY311 (default python3), PY310 (default python3.10, with PYENV_VERSION=3.10.13 for pyenv),
# JOBS (default "py311 py310 min").
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
CREATED_WORK=0
if [ -z "${WORK:-}" ]; then WORK=$(mktemp -d "${TMPDIR:-/tmp}/veca-ci-device.XXXXXX"); CREATED_WORK=1; fi
mkdir -p "$WORK/logs"
JOBS=${JOBS:-py311 py310 min}
FAILED=()
T_ALL=$SECONDS

say() { printf '%s\n' "$*"; }

# check NAME WANT_RC CMD...: run CMD (no stdin), logs in $WORK/logs/NAME.{out,err}; PASS when it
# exits WANT_RC and printed no Python traceback.
check() {
  local name=$1 want=$2 rc=0 t=$SECONDS
  shift 2
  "$@" </dev/null >"$WORK/logs/$name.out" 2>"$WORK/logs/$name.err" || rc=$?
  if [ "$rc" -eq "$want" ] && ! grep -q "^Traceback (most recent call last)" "$WORK/logs/$name.err"; then
    say "PASS $name ($((SECONDS - t)) s)"
    return 0
  fi
  local why="exit $rc, expected $want"
  [ "$rc" -eq "$want" ] && why="printed a traceback"
  say "FAIL $name: $why ($((SECONDS - t)) s): $*"
  tail -n 12 "$WORK/logs/$name.err" | sed 's/^/    | /'
  FAILED+=("$name")
  return 1
}

# check_trt_missing NAME VENV BUNDLE: build-trt without TensorRT exits 7 (backend unavailable)
# with exactly one line on stderr that says so.
check_trt_missing() {
  local name=$1 venv=$2 bundle=$3
  check "$name" 7 "$venv/bin/veca-deploy" build-trt "$bundle" --precision fp32 -q || return 1
  local err="$WORK/logs/$name.err" n
  n=$(wc -l <"$err")
  if [ "$n" -ne 1 ] || ! grep -qiE "tensorrt is not (installed|usable|available)" "$err"; then
    say "FAIL $name-stderr: expected one line saying TensorRT is not installed, got $n line(s):"
    sed 's/^/    | /' "$err" | head -n 12
    FAILED+=("$name-stderr")
    return 1
  fi
  say "PASS $name-stderr: $(cat "$err")"
}

# make_device_venv EXTRAS PYTHON... VENV: the install recipe of docs/jetson.md (torch-free device
# side; on a Jetson the venv also gets --system-site-packages, for JetPack's tensorrt module).
make_device_venv() {
  local extras=$1 venv=${*: -1}
  local py=("${@:2:$#-2}")
  "${py[@]}" -m venv "$venv" &&
    "$venv/bin/python" -m pip install -q --upgrade pip &&
    "$venv/bin/python" -m pip install -q ".[$extras]"
}

# no_torch VENV: `import torch` must fail in the venv.
no_torch() {
  "$1/bin/python" - <<'EOF'
import importlib.util, sys
try:
    import torch
except ImportError:
    sys.exit(0)
sys.exit(f"torch is importable in the device venv: {torch.__file__}")
EOF
}

# device_commands TAG VENV BUNDLE: every bundle command of the CLI, on a private copy of BUNDLE.
device_commands() {
  local tag=$1 venv=$2 src=$3 b="$WORK/$1-bundle" cli="$2/bin/veca-deploy"
  rm -rf "$b" && cp -r "$src" "$b"
  export VECA_CACHE_DIR="$WORK/$tag-cache"  # a cold calibration cache: quantize really calibrates
  check "$tag-inspect" 0 "$cli" inspect "$b"
  check "$tag-validate" 0 "$cli" validate "$b"
  check "$tag-bench" 0 "$cli" bench "$b" --count 20 --quiet
  check "$tag-select" 0 "$cli" select "$b" --budget-ms 1000
  check "$tag-eval" 0 "$cli" eval "$b" --limit 300 -q
  check "$tag-quantize" 0 "$cli" quantize "$b" --precision int8 --calib fashion-mnist --calib-size 300 --target tensorrt -q
  check "$tag-validate-int8" 0 "$cli" validate "$b"
  check "$tag-check-trt" 0 "$cli" check-trt "$b"
  check_trt_missing "$tag-build-trt" "$venv" "$b"
  # fleet: a portable profile, the fleet view, a signed slice that validates only with its key
  local keys="$WORK/$tag-keys" prof="$WORK/$tag-profile.json" pack="$WORK/$tag-pack"
  check "$tag-bench-out" 0 "$cli" bench "$b" --count 10 --quiet --out "$prof"
  check "$tag-fleet" 0 "$cli" fleet "$b" "$prof" --budget-ms 1000
  check "$tag-keygen" 0 "$cli" keygen --out "$keys" --force
  check "$tag-pack" 0 "$cli" pack "$b" --profile "$prof" --budget-ms 1000 --out "$pack" --force \
    --sign-key "$keys/veca-signing.key"
  check "$tag-validate-signed" 0 env VECA_PUBLIC_KEY="$keys/veca-signing.pub" "$cli" validate "$pack"
  check "$tag-unsigned-refused" 5 env VECA_PUBLIC_KEY="$keys/veca-signing.pub" "$cli" validate "$b"
  unset VECA_CACHE_DIR
}

job_start() { JOB_T=$SECONDS; say "== job $1: $2"; }
job_end() { say "== job $1 done in $((SECONDS - JOB_T)) s"; }

# ---- export: the main venv (torch) writes the bundle every device job reads
job_start export "main .venv exports the built-in model"
BUNDLE="$WORK/bundle"
if [ ! -x .venv/bin/veca-deploy ]; then
  say "FAIL export: .venv/bin/veca-deploy not found (run scripts/setup.sh first)"
  exit 1
fi
check export 0 .venv/bin/veca-deploy export --elastic --precision fp32 --out "$BUNDLE" --force -q || {
  say "FAIL: no bundle, nothing else can run"; exit 1; }
job_end export

# ---- py311: the torch-free device venv under the default python3
if [[ " $JOBS " == *" py311 "* ]]; then
  read -r -a PY311 <<<"${PY311:-python3}"
  job_start py311 "torch-free venv ($("${PY311[@]}" -V 2>&1)), pip install \".[device]\""
  V311="$WORK/devenv"
  if check py311-install 0 make_device_venv device "${PY311[@]}" "$V311"; then
    check py311-no-torch 0 no_torch "$V311"
    device_commands py311 "$V311" "$BUNDLE"
  fi
  job_end py311
fi

# ---- py310: JetPack 6's Python
if [[ " $JOBS " == *" py310 "* ]]; then
  if [ -n "${PY310:-}" ]; then read -r -a PY310 <<<"$PY310"; else PY310=(env PYENV_VERSION=3.10.13 python3.10); fi
  if ! "${PY310[@]}" -c 'import sys, venv; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then
    say "SKIP py310: python3.10 not found (tried: ${PY310[*]})"
  else
    job_start py310 "torch-free venv ($("${PY310[@]}" -V 2>&1)), pip install \".[device,jetson]\" + device-side tests"
    V310="$WORK/devenv310"
    if check py310-install 0 make_device_venv device,jetson "${PY310[@]}" "$V310"; then
      check py310-no-torch 0 no_torch "$V310"
      device_commands py310 "$V310" "$BUNDLE"
      # the device-side test modules; their bundle fixtures come from the main venv (torch):
      # tiny_bundle as tests/conftest.py exports it, reference_bundle = the bundle above
      check py310-test-deps 0 "$V310/bin/python" -m pip install -q ".[device,jetson,dev]"
      check py310-no-torch-dev 0 no_torch "$V310"
      check py310-fixture-export 0 .venv/bin/veca-deploy export veca_tiny --random-weights --cores 8,16,24,32 \
        --image-size 28x28 --formats onnx,openvino --precision fp32 --elastic --out "$WORK/tiny_bundle" --force -q
      mkdir -p "$WORK/plugin"
      cat >"$WORK/plugin/veca_ci_device.py" <<'EOF'
"""pytest plugin for the torch-free device venv: bundle fixtures exported beforehand by the main
venv; tests that need torch themselves (the test, or the torch side of the package, imports it)
skip, and so do the CLI error cases of export / checkpoint loading (the torch side's commands).
torch imported from anywhere else in the package stays a failure."""
import os
import re
import shutil

import pytest

# test ids that drive `veca-deploy export` / checkpoint loading through the CLI
_TORCH_SIDE_CASES = re.compile(r"test_cli_errors\.py::(test_exit_codes_are_distinct$|.*\[(out|source|image-size|ckpt)-)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _TORCH_SIDE_CASES.search(item.nodeid):
            item.add_marker(pytest.mark.skip(reason="exercises the export / checkpoint CLI (torch side)"))

_BUNDLES = {"tiny_bundle": os.environ["VECA_CI_TINY_BUNDLE"], "reference_bundle": os.environ["VECA_CI_REFERENCE_BUNDLE"]}
_TORCH_SIDE = (os.sep + os.path.join("veca_deploy", "model") + os.sep, os.sep + os.path.join("veca_deploy", "export") + os.sep,
               os.sep + "tests" + os.sep)
_made = {}


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef, request):
    src = _BUNDLES.get(fixturedef.argname)
    if src is None:
        return None
    if fixturedef.argname not in _made:
        dst = request.getfixturevalue("tmp_path_factory").mktemp("bundles") / fixturedef.argname
        shutil.copytree(src, dst)
        _made[fixturedef.argname] = dst
    # what pytest's own pytest_fixture_setup does with a fixture's value
    fixturedef.cached_result = (_made[fixturedef.argname], fixturedef.cache_key(request), None)
    return _made[fixturedef.argname]


def _needs_torch_itself(excinfo) -> bool:
    if not isinstance(excinfo.value, ImportError) or (excinfo.value.name or "").split(".")[0] != "torch":
        return False
    frames = [str(e.path) for e in excinfo.traceback if "importlib" not in str(e.path)]
    return bool(frames) and any(part in frames[-1] for part in _TORCH_SIDE)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.excinfo is not None and _needs_torch_itself(call.excinfo):
        rep.outcome = "skipped"
        rep.longrepr = (str(item.path), item.location[1] or 0, "needs torch (the export / model side)")
EOF
      TESTS=()
      for m in tensorrt selector runtime reliability calibration quantize cli_errors concurrency no_torch schema golden fleet; do
        [ -f "tests/test_$m.py" ] && TESTS+=("tests/test_$m.py")
      done
      VECA_CI_TINY_BUNDLE="$WORK/tiny_bundle" VECA_CI_REFERENCE_BUNDLE="$BUNDLE" PYTHONPATH="$WORK/plugin" \
        check py310-tests 0 "$V310/bin/python" -m pytest -q -p veca_ci_device -p no:cacheprovider "${TESTS[@]}"
      tail -n 3 "$WORK/logs/py310-tests.out" | sed 's/^/    | /'
    fi
    job_end py310
  fi
fi

# ---- min: the version floors pyproject.toml declares
if [[ " $JOBS " == *" min "* ]]; then
  job_start min "scripts/ci_min_versions.sh (declared floors)"
  check min 0 env WORK="$WORK/min" bash scripts/ci_min_versions.sh "$BUNDLE"
  sed 's/^/    | /' "$WORK/logs/min.out" | grep -E "PASS|FAIL|SKIP" || true
  job_end min
fi

say "== ci_device: $((SECONDS - T_ALL)) s in all"
if [ "${#FAILED[@]}" -gt 0 ]; then
  say "ci_device FAILED: ${FAILED[*]} (logs in $WORK/logs)"
  exit 1
fi
say "ci_device PASSED"
if [ "$CREATED_WORK" = 1 ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
exit 0
