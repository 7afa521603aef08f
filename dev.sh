#!/bin/sh
# sslaudit set-up, demo and tests on a fresh machine (Python 3.11, pip and apt; nothing else needed).
#   ./dev.sh demo    set up, then steal the shipped SimCLR victim (the default audit)
#   ./dev.sh test    set up, then run the tests but the slow end-to-end runs (pytest -m "not slow")
#   ./dev.sh test-slow  set up, then run only the slow end-to-end runs (CI runs test, then this)
#   ./dev.sh test-all   set up, then run every test
#   ./dev.sh test-zoo   a second venv (.venv-zoo: torch 2.14.1 + torchvision 0.29.1 + timm, ~5.7 GB), then the
#                       tests with the real timm/torchvision (CI runs it; the default install stays small)
#   ./dev.sh setup   only set up (.venv with the CPU build of torch, Fashion-MNIST via apt)
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
FMNIST=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

apt_install() {
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

setup() {  # $1: the package extras to install as well ("" for the demo, "test" for the tests)
    stamp="$VENV/.installed${1:+-$1}"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" 2>/dev/null \
            || { apt_install python3-venv && "$PYTHON" -m venv "$VENV"; }
        # torch 2.13.0 is the CPU build (a local wheel here); an unpinned torch pulls a 5 GB CUDA build.
        # --no-compile: Python compiles the modules it imports on first use instead of all of torch's at
        # install time (timed by hand on a 2-core AMD EPYC, 2026-12-05: torch's install 36 s -> 13 s).
        "$VENV/bin/pip" install -q --disable-pip-version-check --no-compile torch==2.13.0
        "$VENV/bin/pip" install -q --disable-pip-version-check --no-compile -e ".${1:+[$1]}"
        touch "$stamp"
    fi
    dataset
}

dataset() {
    if [ -z "${SSLAUDIT_DATA:-}" ] && [ ! -f "$FMNIST" ]; then
        echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
        apt_install dataset-fashion-mnist
    fi
}

ZOO=${ZOO:-.venv-zoo}
setup_zoo() {
    dataset
    if [ ! -f "$ZOO/.installed-zoo" ] || [ pyproject.toml -nt "$ZOO/.installed-zoo" ]; then
        [ -x "$ZOO/bin/python" ] || "$PYTHON" -m venv "$ZOO"
        # torchvision from PyPI does not import beside the 2.13.0 CPU file; this pair does (a CUDA build).
        "$ZOO/bin/pip" install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
        "$ZOO/bin/pip" install -q --disable-pip-version-check -e '.[test,zoo]'
        touch "$ZOO/.installed-zoo"
    fi
}

case "${1:-}" in
    setup) setup test ;;
    demo) setup ""; "$VENV/bin/sslaudit" steal --victim simclr --json runs/demo.json ;;
    test) setup test; "$VENV/bin/python" -m pytest -q -m "not slow" ;;
    test-slow) setup test; "$VENV/bin/python" -m pytest -q -m slow ;;
    test-all) setup test; "$VENV/bin/python" -m pytest -q ;;
    test-zoo) setup_zoo; "$ZOO/bin/python" -m pytest -q -m zoo ;;
    *) echo "usage: ./dev.sh setup|demo|test|test-slow|test-all|test-zoo" >&2; exit 2 ;;
esac
