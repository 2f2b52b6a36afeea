#!/usr/bin/env bash
# The device side on aarch64 (Jetson's architecture) on an x86 machine, under qemu-user:
# an arm64 Debian userland (debootstrap), PyPI's aarch64 wheels of numpy / onnx / onnxruntime /
# openvino, veca-deploy's device extra (no torch), then `validate` and `Runtime.predict` on a
# bundle exported here. Needs root (debootstrap, chroot, binfmt_misc) and Debian's
# qemu-user-static, debootstrap, binfmt-support. Not part of .ci/run (it takes tens of minutes
# under emulation); run by hand: scripts/aarch64_check.sh BUNDLE [ROOTFS]
set -euo pipefail
BUNDLE=$(realpath "${1:?usage: scripts/aarch64_check.sh BUNDLE [ROOTFS]}")
ROOT=${2:-/opt/veca-arm64}
REPO=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "aarch64_check: needs root (debootstrap, chroot)"; exit 2; }
for t in qemu-aarch64-static debootstrap update-binfmts; do
  command -v $t >/dev/null || { echo "aarch64_check: $t missing (apt-get install qemu-user-static debootstrap binfmt-support)"; exit 2; }
done
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "aarch64_check: binfmt_misc has no qemu-aarch64 entry"; exit 2; }
if [ ! -x "$ROOT/usr/bin/python3" ]; then
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOT" http://deb.debian.org/debian
fi
mkdir -p "$ROOT/src" "$ROOT/bundle"
rm -rf "$ROOT/src/veca-deploy" "$ROOT/bundle/b"
git -C "$REPO" archive --format=tar --prefix=veca-deploy/ HEAD | tar -x -C "$ROOT/src"
cp -r "$BUNDLE" "$ROOT/bundle/b"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# the host's CA bundle (a proxy with its own CA sits between some build machines and PyPI)
mkdir -p "$ROOT/etc/ssl/certs"
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$ROOT/etc/ssl/certs/host-ca.crt"
mount --bind /proc "$ROOT/proc" 2>/dev/null || true
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
CA=/etc/ssl/certs/host-ca.crt  # requests (inside pip) prefers REQUESTS_CA_BUNDLE over --cert: point them all at it
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CERT=$CA SSL_CERT_FILE=$CA REQUESTS_CA_BUNDLE=$CA CURL_CA_BUNDLE=$CA \
  chroot "$ROOT" /bin/bash -euo pipefail -c '
  uname -m; python3 --version
  [ -x /venv/bin/python ] || python3 -m venv /venv
  /venv/bin/pip install -q --upgrade pip
  /venv/bin/pip install -q "/src/veca-deploy[device]"
  /venv/bin/python -c "import importlib.util as u, sys; sys.exit(1 if u.find_spec(\"torch\") else 0)" || { echo "torch installed: not the device side"; exit 1; }
  /venv/bin/python -c "import onnxruntime, openvino, numpy, platform; print(platform.machine(), \"onnxruntime\", onnxruntime.__version__, \"openvino\", openvino.__version__, \"numpy\", numpy.__version__)"
  /venv/bin/veca-deploy validate /bundle/b
  /venv/bin/python - <<PY
import numpy as np, veca_deploy, platform
rt = veca_deploy.Runtime.open("/bundle/b", None, backend="onnxruntime", measure=False)
img = (np.arange(28 * 28) % 251).astype(np.uint8).reshape(28, 28)
p = rt.predict(img)
print(platform.machine(), "predict:", rt.tier, {k: v.shape for k, v in p.outputs.items()})
rt.close()
PY
'
echo "aarch64_check: PASS"
