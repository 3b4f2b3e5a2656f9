#!/usr/bin/env bash
# Prove that busi-edge installs and classifies identically on 64-bit ARM without a Raspberry Pi:
# a Debian bookworm arm64 root file system (debootstrap) run through qemu-user-static (binfmt),
# the package pip-installed in it exactly as the README tells a Pi user, `edge-infer --json` on a
# fixed list of BUSI test images, compared with the same run on this x86-64 machine.
# Exit codes: 0 the results agree; 1 they differ; 2 usage error; 3 setup failed (see stderr).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROOTFS=${ARM64_ROOTFS:-${XDG_CACHE_HOME:-$HOME/.cache}/busi-edge/arm64-rootfs}
WORK=${ARM64_WORK:-$REPO/runs/arm64}
BUSI=${BUSI_DIR:-$REPO/../shared/datasets/busi/Dataset_BUSI_with_GT}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGES_LIST=$REPO/tools/arm64/images.txt
REPORT=$REPO/docs/arm64
MODELS=int8
CPUS="cortex-a72 cortex-a76"
TOLERANCE=0.01
ARM_THREADS=4
HOST_THREADS=1
REBUILD=0
SERVE=0
ROOTFS_PACKAGES=python3,python3-venv,ca-certificates,time
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SRC_IN_ROOTFS=/opt/busi-edge
IMAGES_IN_ROOTFS=/tmp/busi-edge-images
BINFMT=/proc/sys/fs/binfmt_misc

usage() {
  cat <<EOF
Usage: sudo tools/arm64/run.sh [options]

Builds (once, then cached) a Debian bookworm arm64 root file system, installs this working tree
in it with 'python3 -m venv .venv && .venv/bin/pip install .' (the README's Raspberry Pi
commands; the aarch64 ai-edge-litert wheel comes from PyPI), classifies the images listed in
tools/arm64/images.txt under emulated Cortex-A72 (Pi 4) and Cortex-A76 (Pi 5) CPUs, does
the same on this x86-64 machine with the same model files and library versions, and compares:
identical predictions and probabilities within the tolerance, or exit 1. Writes
docs/arm64.{json,md} (max |dprob|, footprint, peak RSS). Emulated timings are
not Pi latency and are not reported as such.

Needs root (debootstrap, chroot, mounts), Debian packages qemu-user-static binfmt-support
debootstrap python3-venv (installed with apt-get when missing), the binfmt_misc file system
(mounted when missing), network access to the Debian mirror and PyPI, ~1 GB disk.

Options (environment variable in brackets):
  --rootfs DIR      cached arm64 root file system [ARM64_ROOTFS]
                    (default \${XDG_CACHE_HOME:-\$HOME/.cache}/busi-edge/arm64-rootfs)
  --rebuild         delete the cached root file system and build it again
  --work DIR        scratch folder for this run [ARM64_WORK] (default runs/arm64, gitignored)
  --busi-dir DIR    BUSI Dataset_BUSI_with_GT folder [BUSI_DIR]
  --mirror URL      Debian mirror for debootstrap [DEBIAN_MIRROR] (default $MIRROR)
  --models "LIST"   models to compare (default "$MODELS"; float16 adds 1-5 min per CPU)
  --cpus "LIST"     emulated Pi CPUs: cortex-a53, cortex-a72, cortex-a76 (default "$CPUS")
  --tolerance T     largest allowed |dprob| between x86-64 and arm64 (default $TOLERANCE)
  --serve           also pip install ".[serve]" on arm64 (in .venv-serve), run
                    'edge-infer serve --host 0.0.0.0 --workers 2 --threads 2' and compare one
                    POST /predict with x86-64
  --no-report       do not write docs/arm64.{json,md}
  -h, --help        this text
EOF
}

say() { printf '[arm64 %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { printf 'arm64: error: %s\n' "$*" >&2; exit 3; }
usage_error() { printf 'arm64: usage error: %s (see --help)\n' "$*" >&2; exit 2; }

while (($#)); do
  case $1 in
    --rootfs) ROOTFS=${2:?}; shift 2 ;;
    --rebuild) REBUILD=1; shift ;;
    --work) WORK=${2:?}; shift 2 ;;
    --busi-dir) BUSI=${2:?}; shift 2 ;;
    --mirror) MIRROR=${2:?}; shift 2 ;;
    --models) MODELS=${2:?}; shift 2 ;;
    --cpus) CPUS=${2:?}; shift 2 ;;
    --tolerance) TOLERANCE=${2:?}; shift 2 ;;
    --serve) SERVE=1; shift ;;
    --no-report) REPORT=; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done
[[ $TOLERANCE =~ ^[0-9]*\.?[0-9]+$ ]] || usage_error "--tolerance must be a number, got $TOLERANCE"
[ -d "$BUSI" ] || usage_error "BUSI folder not found: $BUSI (give --busi-dir or BUSI_DIR)"
ROOTFS=$(realpath -m "$ROOTFS")
[ "$ROOTFS" != / ] || usage_error "--rootfs cannot be /"
WORK=$(realpath -m "$WORK")
STARTED=$(date +%s)
PHASE_STARTED=$STARTED

# --- host requirements --------------------------------------------------------------------

if [ "$(id -u)" -ne 0 ]; then
  fail "needs root for debootstrap, chroot and mounting /proc and binfmt_misc: run it with sudo.
It also needs the Debian packages qemu-user-static binfmt-support debootstrap python3-venv time
(it installs them with apt-get when run as root)."
fi
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
[ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
[ -x /usr/bin/time ] || missing+=(time)
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || fail "install ${missing[*]} (Debian package names) and re-run"
  say "installing ${missing[*]} with apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
    >/dev/null || fail "apt-get could not install ${missing[*]}"
fi

# binfmt_misc lets the kernel hand aarch64 executables to qemu-aarch64-static. With the F flag
# (Debian's default) the interpreter is opened once at registration and works inside a chroot.
if [ ! -e "$BINFMT/register" ]; then
  say "mounting binfmt_misc on $BINFMT"
  mount binfmt_misc -t binfmt_misc "$BINFMT" || fail "cannot mount binfmt_misc on $BINFMT
(inside a container: run it privileged, or mount binfmt_misc and register qemu on the host)"
fi
if [ ! -e "$BINFMT/qemu-aarch64" ] || ! grep -qx enabled "$BINFMT/qemu-aarch64"; then
  say "registering qemu-aarch64 with binfmt_misc"
  update-binfmts --enable qemu-aarch64 || fail "update-binfmts --enable qemu-aarch64 failed"
fi
INTERPRETER=$(sed -n 's/^interpreter //p' "$BINFMT/qemu-aarch64")
FIX_BINARY=0
grep -q '^flags: .*F' "$BINFMT/qemu-aarch64" && FIX_BINARY=1

# --- mounts, cleaned up on any exit ---------------------------------------------------------

MOUNTED=()
SERVER_PID=
cleanup() {
  set +e  # undo everything, whatever fails on the way
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
  rm -rf "${ROOTFS:?}$IMAGES_IN_ROOTFS" "$WORK/images"
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do  # a file mount may be gone already
    umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
mounts_under() { awk -v prefix="$1/" 'index($2, prefix) == 1 { print $2 }' /proc/mounts; }
mount_in_rootfs() {  # mount_in_rootfs FOLDER mount-arguments...
  local target=$ROOTFS$1
  shift
  mkdir -p "$target"
  mount "$@" "$target" || fail "cannot mount $target"
  MOUNTED+=("$target")
}
# Inside the root file system: a clean environment, the emulated CPU, this machine's proxy
# variables and its CA bundle (so pip trusts what the host trusts, e.g. an intercepting proxy).
HOST_CA=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
CA_IN_ROOTFS=/etc/ssl/busi-edge-host-ca.crt
ROOTFS_ENV=(HOME=/root PATH=$CHROOT_PATH LANG=C.UTF-8)
[ -f "$HOST_CA" ] && ROOTFS_ENV+=(PIP_CERT=$CA_IN_ROOTFS)
for variable in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  [ -n "${!variable:-}" ] && ROOTFS_ENV+=("$variable=${!variable}")
done
in_rootfs() {  # [NICENESS=N] in_rootfs CPU COMMAND: run a shell command in the root file system
  local cpu=$1
  QEMU_CPU=$cpu nice -n "${NICENESS:-0}" chroot "$ROOTFS" /usr/bin/env -i "${ROOTFS_ENV[@]}" \
    QEMU_CPU="$cpu" /bin/sh -c "$2"
}
phase_done() {  # phase_done NAME: record how long the phase took (wall clock of this machine)
  local now
  now=$(date +%s)
  printf '%s\t%s\n' "$1" $((now - PHASE_STARTED)) >>"$WORK/timings.tsv"
  PHASE_STARTED=$now
}

[ -z "$(mounts_under "$ROOTFS")" ] || fail "something is still mounted under $ROOTFS (an interrupted
run?): $(mounts_under "$ROOTFS" | tr '\n' ' ')- unmount it first"
mkdir -p "$WORK"
rm -f "$WORK"/*.jsonl "$WORK"/*.json "$WORK"/*.time "$WORK"/*.hwcap "$WORK"/*.cpuinfo \
  "$WORK"/*.tsv "$WORK"/*.txt "$WORK"/*.log

# --- the arm64 root file system (cached) --------------------------------------------------

ROOTFS_CACHED=1
if ((REBUILD)) || [ ! -f "$ROOTFS/.busi-edge-rootfs-complete" ]; then
  ROOTFS_CACHED=0
  rm -rf "${ROOTFS:?}"
  mkdir -p "$ROOTFS"
  say "debootstrap bookworm arm64 into $ROOTFS (first stage: download and unpack)"
  debootstrap --arch=arm64 --variant=minbase --foreign --include="$ROOTFS_PACKAGES" \
    bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || fail "debootstrap failed: see $WORK/debootstrap.log"
  if ((!FIX_BINARY)); then  # without the F flag the interpreter must exist inside the chroot
    install -D "$(readlink -f "$INTERPRETER")" "$ROOTFS$INTERPRETER"
  fi
  say "debootstrap second stage (configuring packages under emulation)"
  chroot "$ROOTFS" /debootstrap/debootstrap --second-stage >>"$WORK/debootstrap.log" 2>&1 \
    || fail "debootstrap --second-stage failed: see $WORK/debootstrap.log"
  touch "$ROOTFS/.busi-edge-rootfs-complete"
else
  say "using the cached root file system $ROOTFS"
fi
if ((!FIX_BINARY)) && [ ! -e "$ROOTFS$INTERPRETER" ]; then
  install -D "$(readlink -f "$INTERPRETER")" "$ROOTFS$INTERPRETER"
fi
cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
[ -f "$HOST_CA" ] && install -D -m 644 "$HOST_CA" "$ROOTFS$CA_IN_ROOTFS"
mount_in_rootfs /proc -t proc proc
mount_in_rootfs /dev --bind /dev
mount_in_rootfs /sys --bind /sys
[ "$(in_rootfs cortex-a72 'uname -m')" = aarch64 ] || fail "the root file system does not run as aarch64"
if ! in_rootfs cortex-a72 'python3 -c "import ensurepip, venv" && [ -x /usr/bin/time ]' 2>/dev/null; then
  say "adding ${ROOTFS_PACKAGES//,/ } to the cached root file system"
  in_rootfs cortex-a72 "apt-get update -qq && apt-get install -y -qq ${ROOTFS_PACKAGES//,/ }" \
    >>"$WORK/debootstrap.log" 2>&1 || fail "apt-get in the root file system failed"
fi
phase_done rootfs

# --- one snapshot of the working tree, installed on both sides ------------------------------
# Other people may regenerate models/ meanwhile: both sides install this same copy, and every
# result names the sha256 of the model file that produced it.

say "snapshot of the working tree (without .git, runs, .venv*) -> $WORK/src"
rm -rf "$WORK/src"
mkdir -p "$WORK/src"
tar -C "$REPO" --exclude=./.git --exclude=./runs --exclude='./.venv*' --exclude=__pycache__ \
  --exclude='*.egg-info' --exclude=./build --exclude=./dist --exclude=.pytest_cache \
  --exclude=.ruff_cache -cf - . | tar -C "$WORK/src" -xf -
rm -rf "${ROOTFS:?}$SRC_IN_ROOTFS"
mkdir -p "$ROOTFS$SRC_IN_ROOTFS"
cp -a "$WORK/src/." "$ROOTFS$SRC_IN_ROOTFS/"

say "arm64: python3 -m venv .venv && .venv/bin/pip install . (log: $WORK/arm64-install.log)"
NICENESS=10 in_rootfs cortex-a72 "cd $SRC_IN_ROOTFS && python3 -m venv .venv && .venv/bin/pip install ." \
  >"$WORK/arm64-install.log" 2>&1 || { tail -n 20 "$WORK/arm64-install.log" >&2; fail "pip install on arm64 failed"; }
in_rootfs cortex-a72 "$SRC_IN_ROOTFS/.venv/bin/pip freeze --all" >"$WORK/arm64-freeze.txt"
phase_done arm64_install

say "x86-64: the same install in $WORK/host-venv, pinned to the arm64 versions"
grep -v -i '^busi-edge' "$WORK/arm64-freeze.txt" >"$WORK/arm64-constraints.txt"
rm -rf "$WORK/host-venv"
/usr/bin/python3 -m venv "$WORK/host-venv"
(cd "$WORK/src" && "$WORK/host-venv/bin/pip" install -c "$WORK/arm64-constraints.txt" .) \
  >"$WORK/host-install.log" 2>&1 || { tail -n 20 "$WORK/host-install.log" >&2; fail "pip install on x86-64 failed"; }
"$WORK/host-venv/bin/pip" freeze --all >"$WORK/host-freeze.txt"
HOST_PYTHON=$WORK/host-venv/bin/python
phase_done host_install

# --- the images, copied in for this run only --------------------------------------------------

mkdir -p "$WORK/images"
count=0
while IFS= read -r image || [ -n "$image" ]; do
  [[ -z $image || $image == \#* ]] && continue
  [ -f "$BUSI/$image" ] || fail "listed image not found: $BUSI/$image"
  install -D -m 644 "$BUSI/$image" "$WORK/images/$image"
  count=$((count + 1))
done <"$IMAGES_LIST"
CLASS_DIRS=$(cd "$WORK/images" && for class in normal benign malignant; do
  [ -d "$class" ] && printf '%s ' "$class"; done)
mkdir -p "$ROOTFS$IMAGES_IN_ROOTFS"
cp -a "$WORK/images/." "$ROOTFS$IMAGES_IN_ROOTFS/"
say "$count images from $IMAGES_LIST"

# --- classify on arm64 (emulated Pi 4 and Pi 5 CPUs) -----------------------------------------

read_hwcaps='import ctypes; libc = ctypes.CDLL(None); libc.getauxval.restype = ctypes.c_ulong; print(libc.getauxval(16), libc.getauxval(26))'
CPUINFO_MOUNTED=0
show_pi_cpuinfo() {  # show_pi_cpuinfo CPU: the guest's /proc/cpuinfo becomes that Pi core's
  # qemu-user would show the guest this machine's x86 /proc/cpuinfo, on which ai-edge-litert's
  # CPU detection crashes; a real Pi shows its own, and so does this chroot.
  local cpu=$1
  in_rootfs "$cpu" "python3 -c '$read_hwcaps'" >"$WORK/arm64.$cpu.hwcap"
  (cd "$REPO" && "$HOST_PYTHON" -m tools.arm64.cpuinfo "$cpu" \
    $(cat "$WORK/arm64.$cpu.hwcap") "$(nproc --all)") >"$WORK/arm64.$cpu.cpuinfo" \
    || usage_error "no Pi CPU is emulated as $cpu"
  if ((CPUINFO_MOUNTED)); then
    umount "$ROOTFS/proc/cpuinfo"
  else
    MOUNTED+=("$ROOTFS/proc/cpuinfo")
    CPUINFO_MOUNTED=1
  fi
  mount --bind "$WORK/arm64.$cpu.cpuinfo" "$ROOTFS/proc/cpuinfo" || fail "cannot mount a Pi cpuinfo"
}
in_rootfs cortex-a72 "/usr/bin/time -v -o /tmp/python.time python3 -c pass"
mv "$ROOTFS/tmp/python.time" "$WORK/arm64-python.time"
SKIPPED=
for cpu in $CPUS; do
  show_pi_cpuinfo "$cpu"
  for model in $MODELS; do
    say "arm64 ($cpu): edge-infer --json --model $model --threads $ARM_THREADS"
    code=0
    NICENESS=10 in_rootfs "$cpu" "cd $IMAGES_IN_ROOTFS && exec /usr/bin/time -v \
      -o /tmp/edge-infer.time $SRC_IN_ROOTFS/.venv/bin/edge-infer --json --quiet \
      --threads $ARM_THREADS --model $model $CLASS_DIRS" \
      >"$WORK/arm64.$cpu.$model.jsonl" 2>"$WORK/arm64.$cpu.$model.log" || code=$?
    if ((code == 1)) && [ "$model" != int8 ]; then
      # edge-infer's exit 1: the model could not be loaded, e.g. its file no longer matches
      # the manifest because someone is regenerating it. The default int8 model is required.
      say "skipping $model: edge-infer could not load it ($(tail -n 1 "$WORK/arm64.$cpu.$model.log"))"
      rm -f "$WORK"/arm64.*."$model".*
      SKIPPED="$SKIPPED $model"
      MODELS=$(printf '%s\n' $MODELS | grep -vx "$model" | tr '\n' ' ')
      continue
    fi
    # exit 5: some image was refused as not breast ultrasound; its JSON line still holds the
    # probabilities and the check's score, which the comparison covers like any other result
    ((code == 0 || code == 5)) || { cat "$WORK/arm64.$cpu.$model.log" >&2; fail "edge-infer failed on arm64 ($cpu, $model)"; }
    mv "$ROOTFS/tmp/edge-infer.time" "$WORK/arm64.$cpu.$model.time"
  done
done
[ -n "$MODELS" ] || fail "no model could be compared"
phase_done arm64_classify

# --- optional: the web app on arm64, as the README's Raspberry Pi section runs it -------------

SERVE_IMAGE=
if ((SERVE)); then
  say "arm64: python3 -m venv .venv-serve && .venv-serve/bin/pip install \".[serve]\""
  NICENESS=10 in_rootfs cortex-a72 "cd $SRC_IN_ROOTFS && rm -rf .venv-serve && \
    python3 -m venv .venv-serve && .venv-serve/bin/pip install '.[serve]'" \
    >"$WORK/arm64-serve-install.log" 2>&1 \
    || { tail -n 20 "$WORK/arm64-serve-install.log" >&2; fail "pip install .[serve] on arm64 failed"; }
  port=$("$HOST_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  say "arm64: edge-infer serve --host 0.0.0.0 --port $port --workers 2 --threads 2"
  show_pi_cpuinfo cortex-a72
  QEMU_CPU=cortex-a72 chroot "$ROOTFS" /usr/bin/env -i "${ROOTFS_ENV[@]}" QEMU_CPU=cortex-a72 \
    "$SRC_IN_ROOTFS/.venv-serve/bin/edge-infer" serve --host 0.0.0.0 --port "$port" \
    --workers 2 --threads 2 >"$WORK/arm64-serve.log" 2>&1 &
  SERVER_PID=$!
  for ((waited = 0; ; waited += 2)); do
    curl -sf "http://127.0.0.1:$port/healthz" >"$WORK/arm64-serve.healthz.json" && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/arm64-serve.log" >&2; fail "edge-infer serve exited on arm64"; }
    ((waited < 600)) || fail "edge-infer serve on arm64 did not answer /healthz within 600 s"
    sleep 2
  done
  SERVE_IMAGE=$(grep -m 1 '^malignant/' "$IMAGES_LIST")
  curl -sf -F "file=@$WORK/images/$SERVE_IMAGE" "http://127.0.0.1:$port/predict" \
    >"$WORK/arm64-serve.predict.json" || fail "POST /predict to the arm64 server failed"
  kill "$SERVER_PID" && { wait "$SERVER_PID" 2>/dev/null || true; }
  SERVER_PID=
  phase_done arm64_serve
fi

# --- the same on this x86-64 machine, same model files and library versions -------------------

/usr/bin/time -v -o "$WORK/host-python.time" /usr/bin/python3 -c pass
for model in $MODELS; do
  say "x86-64: edge-infer --json --model $model --threads $HOST_THREADS"
  code=0
  (cd "$WORK/images" && /usr/bin/time -v -o "$WORK/host.$model.time" \
    "$WORK/host-venv/bin/edge-infer" --json --quiet --threads "$HOST_THREADS" --model "$model" \
    $CLASS_DIRS) >"$WORK/host.$model.jsonl" 2>"$WORK/host.$model.log" || code=$?
  ((code == 0 || code == 5)) \
    || { cat "$WORK/host.$model.log" >&2; fail "edge-infer failed on x86-64 ($model)"; }
done
phase_done host

# --- compare and report ------------------------------------------------------------------------

{
  printf 'date\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf 'rootfs_cached\t%s\n' "$ROOTFS_CACHED"
  printf 'debian_arm64\t%s\n' "$(cat "$ROOTFS/etc/debian_version")"
  printf 'arm64_python\t%s\n' "$(in_rootfs cortex-a72 'python3 --version')"
  printf 'host_python\t%s\n' "$(/usr/bin/python3 --version)"
  printf 'qemu\t%s\n' "$(qemu-aarch64-static --version | head -n 1)"
  printf 'host_cpu\t%s\n' "$(sed -n 's/^model name\t*: //p' /proc/cpuinfo | head -n 1)"
  printf 'arm_threads\t%s\n' "$ARM_THREADS"
  printf 'host_threads\t%s\n' "$HOST_THREADS"
  printf 'skipped_models\t%s\n' "${SKIPPED# }"
  printf 'serve_image\t%s\n' "$SERVE_IMAGE"
  printf 'images_list\t%s\n' "${IMAGES_LIST#"$REPO"/}"
  printf 'total_seconds\t%s\n' $(($(date +%s) - STARTED))
} >"$WORK/meta.tsv"
status=0
(cd "$REPO" && "$HOST_PYTHON" -m tools.arm64.report "$WORK" \
  --arm64-venv "$ROOTFS$SRC_IN_ROOTFS/.venv" --tolerance "$TOLERANCE" \
  ${REPORT:+--out "$REPORT"}) || status=$?
exit "$status"
