#!/usr/bin/env bash
# Install an emulated Raspberry Pi (64-bit Raspberry Pi OS bookworm userland) for
# sliver's deploy-side tests: no Arm hardware is needed.
#
#   bash tools/emulator/setup_pi_emulator.sh            # build it (quick no-op when already built)
#   bash tools/emulator/setup_pi_emulator.sh --force    # rebuild from scratch
#
# What it builds, under ${SLIVER_PI_ROOT:-$HOME/.cache/sliver/pi}:
#   sysroot/   Debian bookworm arm64 packages (glibc, Python 3.11, ...) unpacked with
#              `dpkg -x`; qemu-aarch64-static runs its python3.11 with `-L sysroot`.
#   site/      aarch64 wheels of apache-tvm, apache-tvm-ffi, numpy and
#              typing_extensions (what `pip install --no-deps` would need; PYTHONPATH).
#   READY      stamp written last, after a smoke test, holding the versions: a root
#              without it is incomplete and gets rebuilt.
#   device/    a second view of the Pi as a user's would be: the sysroot (hard links)
#              plus Debian's own python3-numpy, and no TVM anywhere.  A device bundle
#              (`sliver bundle`) must run from it with nothing else on sys.path.
#              Its own stamp, device/READY, follows a smoke test.
# Raspberry Pi OS bookworm is Debian bookworm with the same Python 3.11, so the
# emulated userland matches what a real Pi runs.  binfmt_misc is not assumed: callers
# run qemu-aarch64-static explicitly (see sliver.tools.emulator.emulate).
#
# Downloads are unpacked in a temp folder next to the root and moved into place only
# when complete; READY follows once the emulated Python has precompiled its modules
# and passed the smoke test.  A lock serialises concurrent runs.  The host's apt configuration is
# never changed: arm64 indexes live in a private apt state folder.
#
# Environment: SLIVER_PI_ROOT (where to build), PYTHON (host Python used for pip).
set -euo pipefail

# Bump RECIPE_REVISION whenever the package set or the layout changes: a root built
# by another recipe is rebuilt.
RECIPE_REVISION=1
TVM_VERSION=0.27.0.post1
TVM_FFI_VERSION=0.1.14.post1  # 0.1.15.x segfaults in tvm.ir.save_json (DESIGN.md §2)
NUMPY_VERSION=2.4.6           # has cp311 manylinux aarch64 wheels
TYPING_EXTENSIONS_VERSION=4.15.0  # tvm_ffi imports it at start-up
PI_SUITE=bookworm             # Raspberry Pi OS bookworm = Debian 12
PI_PYTHON=python3.11
PI_CPU=cortex-a72             # Raspberry Pi 4; qemu's default "max" has SVE, dotprod...
DEBS=(
    libc6 libpython3.11-minimal python3.11-minimal libpython3.11-stdlib libffi8
    libssl3 libexpat1 zlib1g libstdc++6 libgcc-s1 libbz2-1.0 liblzma5 libsqlite3-0
    libuuid1 libtinfo6 libncursesw6 libreadline8 libdb5.3 libnsl2 libtirpc3
    libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1
    libcrypt1 media-types libgomp1
)
# Debian's numpy for the device view (python3-numpy and the BLAS/LAPACK it links)
DEVICE_DEBS=(python3-numpy libblas3 liblapack3 libgfortran5)
DEVICE_RECIPE_REVISION=1
WHEELS=(
    "apache-tvm==${TVM_VERSION}"
    "apache-tvm-ffi==${TVM_FFI_VERSION}"
    "numpy==${NUMPY_VERSION}"
    "typing_extensions==${TYPING_EXTENSIONS_VERSION}"
)
# Deliberately absent: ml_dtypes (optional for tvm; bfloat16/float8 only) and torch.
RECIPE="r${RECIPE_REVISION} ${PI_SUITE} ${PI_PYTHON} ${WHEELS[*]}"

ROOT="${SLIVER_PI_ROOT:-$HOME/.cache/sliver/pi}"
DEVICE_RECIPE="r${DEVICE_RECIPE_REVISION} ${PI_SUITE} ${DEVICE_DEBS[*]}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python || true)}"
FORCE=0
WORK=""  # temp build folder, removed on exit
DEVICE_WORK=""  # temp build folder of the device view, removed on exit

log() { printf '[pi-emulator] %s\n' "$*"; }
die() { printf '[pi-emulator] error: %s\n' "$*" >&2; exit 1; }

for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (try --help)" ;;
    esac
done

root_is_current() {
    [[ -f "$ROOT/READY" ]] && [[ "$(head -n 1 "$ROOT/READY")" == "recipe: $RECIPE" ]]
}

# -- host tools -------------------------------------------------------------------
# qemu-aarch64-static runs the emulated Pi; the cross gcc links the .so files sliver
# compiles for it; qemu-aarch64 (qemu-user) counts instructions; llvm models their cycles.  All come from Debian;
# `apt-get update` runs at most once.
ensure_host_packages() {
    local missing=()
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
    # the C++ runner (native/) is cross-compiled for the Pi with it
    command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
    # crti.o & co: without them (a Recommends of the cross gcc) linking arm64 .so files fails
    [[ -f /usr/aarch64-linux-gnu/lib/crti.o ]] || missing+=(libc6-dev-arm64-cross)
    # the dynamically linked qemu-aarch64 loads TCG plugins (sliver.tools.emulator.icount counts
    # executed instructions with one); the static build cannot
    command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
    # llvm-mca and llvm-objdump model the counted code's Cortex-A72 cycles (sliver.tools.emulator.cycles)
    { command -v llvm-mca && command -v llvm-objdump; } >/dev/null || missing+=(llvm)
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them (a Debian host is needed)"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "installing ${missing[*]} needs root (or sudo)"
        sudo=(sudo)
    fi
    log "installing host packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# -- arm64 userland ---------------------------------------------------------------
# Writes deb822 sources for a private apt: the host's Debian mirrors (so proxies,
# mirrors and snapshots configured for this machine are honoured), with the Pi's
# suite in place of the host's codename and no architecture restriction.
write_pi_sources() {
    local out="$1" codename
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    "$PYTHON" - "$out" "$codename" "$PI_SUITE" <<'PY'
import glob, re, sys

out, host, pi = sys.argv[1:4]

def suite(s):
    # bookworm-updates -> bookworm-updates; trixie-security -> bookworm-security
    return pi + s[len(host):] if host and (s == host or s.startswith(host + "-")) else s

stanzas = []
# One-line format: deb [opt=val ...] URI SUITE COMPONENT...
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        line = line.split("#", 1)[0].strip()
        m = re.match(r"deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
        if not m:
            continue
        opts = dict(o.split("=", 1) for o in (m.group(1) or "").split() if "=" in o)
        st = {"URIs": m.group(2), "Suites": m.group(3), "Components": m.group(4)}
        if "signed-by" in opts:
            st["Signed-By"] = opts["signed-by"]
        stanzas.append(st)
# deb822 format: paragraphs of "Key: value" (continuation lines start with a space).
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for para in re.split(r"\n\s*\n", open(path).read()):
        st, key = {}, None
        for line in para.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                st[key] += "\n" + line
            elif ":" in line:
                key, val = line.split(":", 1)
                st[key.strip()] = val.strip()
        if "deb" in st.get("Types", "").split() and st.get("Enabled", "yes").lower() != "no":
            stanzas.append(st)

keep = []
for st in stanzas:
    if "Suites" not in st or "debian" not in st.get("URIs", ""):
        continue  # only Debian's own archive carries the arm64 userland we want
    lines = ["Types: deb", "URIs: " + st["URIs"],
             "Suites: " + " ".join(suite(s) for s in st["Suites"].split()),
             "Components: " + st.get("Components", "main")]
    if "Signed-By" in st:
        lines.append("Signed-By: " + st["Signed-By"])
    keep.append("\n".join(lines))
if not keep:
    sys.exit("no Debian apt source found in /etc/apt/sources.list{,.d}")
open(out, "w").write("\n\n".join(keep) + "\n")
PY
}

# Downloads the arm64 .debs named after $1 (the work folder) into $1/debs, through a
# private apt state in $1/apt.
download_debs() {
    local work="$1" apt="$1/apt" debs="$1/debs"
    shift
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources.list.d" "$debs"
    : >"$apt/status"
    write_pi_sources "$apt/sources.list.d/pi.sources"
    local opts=(
        -o APT::Architecture=arm64 -o APT::Architectures=arm64
        -o Dir::State="$apt" -o Dir::State::Lists="$apt/lists" -o Dir::State::status="$apt/status"
        -o Dir::Cache="$apt/cache"
        -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$apt/sources.list.d"
        -o APT::Sandbox::User=root -q
    )
    log "fetching arm64 package indexes ($(grep -h "^URIs:" "$apt/sources.list.d/pi.sources" | awk '{print $2}' | sort -u | tr '\n' ' '))"
    apt-get "${opts[@]}" update >"$work/apt-update.log" 2>&1 || { cat "$work/apt-update.log" >&2; die "apt-get update (arm64) failed"; }
    log "downloading $# arm64 packages"
    (cd "$debs" && apt-get "${opts[@]}" download "$@" >"$work/apt-download.log" 2>&1) ||
        { cat "$work/apt-download.log" >&2; die "apt-get download (arm64) failed"; }
}

build_sysroot() {
    local work="$1" debs="$1/debs" sysroot="$1/sysroot"
    mkdir -p "$sysroot"
    download_debs "$work" "${DEBS[@]}"
    log "unpacking into sysroot ($(du -sh "$debs" | cut -f1) of .debs)"
    local deb
    for deb in "$debs"/*.deb; do
        dpkg -x "$deb" "$sysroot"
    done
    [[ -x "$sysroot/usr/bin/$PI_PYTHON" ]] || die "$PI_PYTHON missing from the unpacked sysroot"
    # No PYTHONHOME is needed: the emulated Python finds its prefix (sysroot/usr) from
    # its own path, so its sys.path never reaches the host's site-packages.

    # Versions for the stamp.
    for deb in "$debs"/*.deb; do basename "$deb"; done >"$work/debs.txt"
}

build_site() {
    local work="$1"
    [[ -n "$PYTHON" ]] || die "no host python3 found (set PYTHON=...)"
    log "installing aarch64 wheels: ${WHEELS[*]}"
    # --platform lists every manylinux tag an aarch64 glibc-2.36 system accepts that
    # these projects publish.  --no-compile: main() compiles them with the emulated Python.
    "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --no-compile \
        --only-binary=:all: --implementation cp --python-version 3.11 \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
        --platform manylinux_2_24_aarch64 --platform manylinux_2_17_aarch64 \
        --platform manylinux2014_aarch64 \
        --target "$work/site" "${WHEELS[@]}" >"$work/pip.log" 2>&1 ||
        { cat "$work/pip.log" >&2; die "pip could not fetch the aarch64 wheels"; }
    rm -rf "$work/site/bin"  # console scripts with host shebangs: useless on the Pi
}

# Runs the emulated Python on the root being built ($1); arguments follow.
emulated_python() {
    local root="$1"
    shift
    env -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP -u PYTHONUSERBASE \
        TVM_USE_RUNTIME_LIB=1 PYTHONNOUSERSITE=1 PYTHONPATH="$root/site" \
        qemu-aarch64-static -cpu "$PI_CPU" -L "$root/sysroot" "$root/sysroot/usr/bin/$PI_PYTHON" "$@"
}

smoke_test() {
    emulated_python "$1" - <<'PY'
import platform, sys
import numpy, tvm, tvm.runtime
assert platform.machine() == "aarch64", platform.machine()
assert tvm.base._RUNTIME_ONLY, "tvm loaded its compiler: TVM_USE_RUNTIME_LIB ignored?"
print(f"[pi-emulator] smoke test: python {platform.python_version()} on {platform.machine()}, "
      f"tvm {tvm.__version__} (runtime only), numpy {numpy.__version__}")
PY
}

device_is_current() {
    [[ -f "$ROOT/device/READY" ]] && [[ "$(head -n 1 "$ROOT/device/READY")" == "recipe: $DEVICE_RECIPE" ]]
}

# The device view: the sysroot (hard links: no copy) plus Debian's python3-numpy, with
# no TVM and no site/ folder.  Built next to the root and moved into place when its
# smoke test passed, so the main root is never touched (tests may be using it).
build_device_root() {
    local start=$SECONDS work
    work="$(mktemp -d "$ROOT.device.XXXXXX")"
    DEVICE_WORK="$work"
    trap 'rm -rf "$WORK" "$DEVICE_WORK"' EXIT
    log "building the device view (sysroot + Debian's python3-numpy, no TVM) in $work"
    download_debs "$work" "${DEVICE_DEBS[@]}"
    cp -al "$ROOT/sysroot" "$work/device"
    local deb
    for deb in "$work"/debs/*.deb; do
        dpkg -x "$deb" "$work/device"
    done
    # dpkg -x runs no maintainer scripts: make the links update-alternatives would
    local lib="$work/device/usr/lib/aarch64-linux-gnu" so
    for so in blas/libblas.so.3 lapack/liblapack.so.3; do
        [[ -e "$lib/$so" ]] || die "$so missing from the unpacked BLAS/LAPACK packages"
        ln -sfn "$so" "$lib/$(basename "$so")"
    done
    rm -f "$work/device/READY"
    env -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP -u PYTHONUSERBASE PYTHONNOUSERSITE=1 \
        qemu-aarch64-static -cpu "$PI_CPU" -L "$work/device" "$work/device/usr/bin/$PI_PYTHON" \
        -m compileall -q -j 0 "$work/device/usr/lib/python3/dist-packages" >/dev/null ||
        log "note: compileall skipped files it cannot compile"
    # Smoke test: numpy imports from Debian's dist-packages, and TVM is nowhere.
    env -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP -u PYTHONUSERBASE PYTHONNOUSERSITE=1 \
        qemu-aarch64-static -cpu "$PI_CPU" -L "$work/device" "$work/device/usr/bin/$PI_PYTHON" - <<'PY'
import importlib.util, numpy
assert numpy.__file__.startswith(__import__("sys").prefix), numpy.__file__
assert importlib.util.find_spec("tvm") is None and importlib.util.find_spec("tvm_ffi") is None
print(f"[pi-emulator] device view: numpy {numpy.__version__} (Debian), no TVM")
PY
    {
        echo "recipe: $DEVICE_RECIPE"
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        for deb in "$work"/debs/*.deb; do echo "deb: $(basename "$deb")"; done
    } >"$work/device/READY.tmp"
    mv "$work/device/READY.tmp" "$work/device/READY"
    rm -rf "$ROOT/device"
    mv "$work/device" "$ROOT/device"
    rm -rf "$work"
    log "device view ready: $ROOT/device (built in $((SECONDS - start)) s)"
}

ensure_device_root() {
    if ((FORCE == 0)) && device_is_current; then
        return 0
    fi
    exec 9>"$ROOT.lock"
    flock 9
    ((FORCE == 0)) && device_is_current && return 0
    rm -rf "$ROOT".device.*  # leftovers of killed runs (we hold the lock)
    build_device_root
}

main() {
    ensure_host_packages
    if ((FORCE == 0)) && root_is_current; then
        log "already set up at $ROOT ($(sed -n 's/^built: //p' "$ROOT/READY"))"
        ensure_device_root
        return 0
    fi

    mkdir -p "$(dirname "$ROOT")"
    # One builder at a time (e.g. parallel test workers calling ensure_ready).
    exec 9>"$ROOT.lock"
    flock 9
    if ((FORCE == 0)) && root_is_current; then
        log "already set up at $ROOT (by a concurrent run)"
        ensure_device_root
        return 0
    fi
    rm -rf "$ROOT".build.*  # leftovers of killed runs (we hold the lock)

    local start=$SECONDS
    WORK="$(mktemp -d "$ROOT.build.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    log "building in $WORK"
    build_sysroot "$WORK"
    build_site "$WORK"

    # Swap in the new tree.  The old root loses READY first and the new one gets it
    # only after the smoke test, so an interrupted run leaves a root that is rebuilt
    # rather than trusted.
    rm -f "$ROOT/READY"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    mv "$WORK/sysroot" "$WORK/site" "$ROOT/"

    # Compiled in place (the .pyc files record their source paths), by the emulated
    # Python itself, so later starts under qemu skip compiling the stdlib and tvm.
    log "precompiling the Python stdlib and wheels under qemu"
    emulated_python "$ROOT" -m compileall -q -j 0 "$ROOT/sysroot/usr/lib/$PI_PYTHON" "$ROOT/site" >/dev/null ||
        log "note: compileall skipped files it cannot compile (harmless: stdlib test data)"
    smoke_test "$ROOT"

    {
        echo "recipe: $RECIPE"
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "qemu: $(qemu-aarch64-static --version | head -n 1)"
        echo "apache-tvm: $TVM_VERSION"
        echo "apache-tvm-ffi: $TVM_FFI_VERSION"
        echo "numpy: $NUMPY_VERSION"
        echo "typing_extensions: $TYPING_EXTENSIONS_VERSION"
        sed 's/^/deb: /' "$WORK/debs.txt"
    } >"$ROOT/READY.tmp"
    mv "$ROOT/READY.tmp" "$ROOT/READY"
    log "ready: $ROOT ($(du -sh "$ROOT" | cut -f1), built in $((SECONDS - start)) s)"
    build_device_root
}

main
