#!/usr/bin/env bash
# armlp developer entry point: installs what is missing, then runs a job.
#
#   ./run.sh demo    the main job: build an example ARM program and show armlp at work
#   ./run.sh test    ruff, mypy and the test suite
#   ./run.sh setup   only install (Debian packages, .venv)
#
# Debian packages are installed with apt-get when a tool is missing (as root,
# or through sudo).  The virtual environment lives in .venv and is refreshed
# when pyproject.toml changes.
set -euo pipefail
# A relative ARMLP_PYTHON path is the caller's, not the checkout's.
if [[ "${ARMLP_PYTHON:-}" == */* ]]; then
    ARMLP_PYTHON=$(realpath -m -- "$ARMLP_PYTHON")
fi
cd "$(dirname "$0")"

APT_PACKAGES=(gcc-arm-linux-gnueabi binutils-arm-linux-gnueabi libc6-dev-armel-cross
              gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
              qemu-user qemu-system-arm gdb-multiarch python3-venv make patch)

# The interpreter of .venv: Debian's own python3 (built with profile-guided
# optimisation; armlp runs about a sixth faster on it than on an unoptimised
# build such as pyenv's) if it is 3.11 or newer, else the first python3 on
# PATH.  ARMLP_PYTHON chooses another; .venv is made again when the choice
# changes.  Chosen again after apt-get, which may install Debian's.
python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
choose_python() {
    if [ -n "${ARMLP_PYTHON:-}" ]; then
        PYTHON=$ARMLP_PYTHON
        if ! python_ok "$PYTHON"; then
            echo "run.sh: ARMLP_PYTHON=$PYTHON is not a Python 3.11 or newer that runs" >&2
            exit 2
        fi
    elif python_ok /usr/bin/python3; then
        PYTHON=/usr/bin/python3
    else
        PYTHON=python3
    fi
}
choose_python

# The kernel live patching kit (armlp kernel build: headers, host kbuild,
# vmlinux of Debian's armhf kernel) and the test guest live here.
export ARMLP_KERNEL_CACHE="${ARMLP_KERNEL_CACHE:-$PWD/build/kernel}"

need_apt() {
    command -v arm-linux-gnueabi-gcc >/dev/null || return 0
    command -v arm-linux-gnueabi-objdump >/dev/null || return 0
    command -v arm-linux-gnueabihf-gcc >/dev/null || return 0
    command -v qemu-arm >/dev/null || return 0
    command -v qemu-system-arm >/dev/null || return 0
    command -v gdb-multiarch >/dev/null || return 0
    command -v make >/dev/null || return 0
    command -v patch >/dev/null || return 0
    [ -e /usr/arm-linux-gnueabi/lib/libc.a ] || return 0
    [ -e /usr/arm-linux-gnueabihf/lib/libc.a ] || return 0
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || return 0
    return 1
}

setup_apt() {
    if need_apt; then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "== installing Debian packages: ${APT_PACKAGES[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            "${APT_PACKAGES[@]}" >/dev/null
    fi
}

setup_venv() {
    local stamp=.venv/.armlp-installed
    local want have=""
    choose_python
    # The interpreter itself says which binary it is (a pyenv shim is a
    # script, not a link to it).
    want=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')
    [ -x .venv/bin/python ] && have=$(readlink -f .venv/bin/python)
    if [ -e .venv ] && [ "$have" != "$want" ]; then
        echo "== .venv was made with ${have:-an interpreter that is gone}, not $want: making it again"
        rm -rf .venv
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "== creating .venv with $want"
        "$PYTHON" -m venv .venv
    fi
    if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "== installing armlp and its dependencies into .venv"
        .venv/bin/python -m pip install -q --upgrade pip >/dev/null
        .venv/bin/python -m pip install -q -e '.[dev]'
        touch "$stamp"
    fi
}

# zlib's source (Debian source package `zlib`) for the loader's real-code oracle
# test (tests/test_loader.py): fetched once into build/zlib, then tests need
# no network.  deb-src entries are added as a copy of the system's sources.
setup_zlib() {
    [ -e build/zlib/zlib.h ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    local src=/etc/apt/sources.list.d/armlp-src.sources
    if [ ! -e "$src" ]; then
        if [ -e /etc/apt/sources.list.d/debian.sources ]; then
            sed 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
                | $sudo tee "$src" >/dev/null
        elif [ -e /etc/apt/sources.list ]; then
            grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' \
                | $sudo tee /etc/apt/sources.list.d/armlp-src.list >/dev/null
        fi
    fi
    echo "== fetching the zlib source package into build/zlib"
    $sudo apt-get update -qq
    local tmp
    tmp=$(mktemp -d)
    chmod 755 "$tmp"
    (cd "$tmp" && apt-get source --download-only -qq zlib >/dev/null)
    local orig
    orig=$(ls "$tmp"/zlib_*.orig.tar.* | head -n1)
    mkdir -p build/zlib
    tar -xf "$orig" -C build/zlib --strip-components=1
    rm -rf "$tmp"
}

# A 32-bit ARM Linux with a real gdbserver for the attach test
# (tests/test_gdbserver.py): Debian's armhf kernel, busybox and gdbserver,
# fetched once into build/vm.
setup_vm() {
    [ -s build/vm/vmlinuz ] && return 0
    echo "== fetching an ARM Linux kernel and gdbserver into build/vm"
    tests/vm/gdbserver-vm.sh prepare
}

# Debian's armhf kernel: what `armlp kernel build` needs for it (headers, the
# host's kbuild of the same version, vmlinux with symbols), its source (for
# `armlp kernel build --diff`) and its vmlinuz and a busybox for the test
# guest, fetched once into $ARMLP_KERNEL_CACHE.
setup_kernel() {
    compgen -G "$ARMLP_KERNEL_CACHE/*/guest/busybox" >/dev/null &&
        compgen -G "$ARMLP_KERNEL_CACHE/*/source/.complete" >/dev/null && return 0
    echo "== fetching Debian's armhf kernel kit and source into $ARMLP_KERNEL_CACHE"
    .venv/bin/armlp kernel fetch --guest --source
}

setup() { setup_apt; setup_venv; setup_zlib; setup_vm; setup_kernel; }

case "${1:-}" in
    setup) setup ;;
    demo)
        setup
        shift
        exec .venv/bin/python examples/demo.py "$@"
        ;;
    test)
        setup
        shift
        echo "== ruff"; .venv/bin/python -m ruff check .
        echo "== mypy"; .venv/bin/python -m mypy
        echo "== pytest"
        exec .venv/bin/python -m pytest -n 2 "$@"
        ;;
    *)
        echo "usage: ./run.sh demo|test|setup" >&2
        exit 2
        ;;
esac
