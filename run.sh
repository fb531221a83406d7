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
cd "$(dirname "$0")"

APT_PACKAGES=(gcc-arm-linux-gnueabi binutils-arm-linux-gnueabi libc6-dev-armel-cross
              qemu-user gdb-multiarch python3-venv make)

need_apt() {
    command -v arm-linux-gnueabi-gcc >/dev/null || return 0
    command -v arm-linux-gnueabi-objdump >/dev/null || return 0
    command -v qemu-arm >/dev/null || return 0
    command -v gdb-multiarch >/dev/null || return 0
    [ -e /usr/arm-linux-gnueabi/lib/libc.a ] || return 0
    python3 -c 'import ensurepip, venv' 2>/dev/null || return 0
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
    if [ ! -x .venv/bin/python ]; then
        echo "== creating .venv"
        python3 -m venv .venv
    fi
    if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "== installing armlp and its dependencies into .venv"
        .venv/bin/python -m pip install -q --upgrade pip >/dev/null
        .venv/bin/python -m pip install -q -e '.[dev]'
        touch "$stamp"
    fi
}

setup() { setup_apt; setup_venv; }

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
