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
        install "$1"
        touch "$stamp"
    fi
    dataset
}

# torch 2.13.0 is the CPU build (a local wheel here); an unpinned torch pulls a 5 GB CUDA build.
# --no-compile: Python compiles the modules it imports on first use instead of all of torch's at install
# time (timed by hand on a 2-core AMD EPYC, 2026-12-05: torch's install 36 s -> 13 s).
# Unpacking torch's large wheel is most of the set-up, so torch (with sympy, mpmath and networkx, which
# only torch needs) unpacks beside a second pip that installs everything else (the project's dependencies,
# read from pyproject.toml, and torch's other ones): the two sets share no package, so the two pips never
# write the same files. The last pip resolves the whole set again and installs only the project (or
# whatever the first two left out).
TORCH_ALONE="torch==2.13.0 sympy>=1.13.3 mpmath>=1.1.0,<1.4 networkx>=2.5.1"  # torch 2.13.0's METADATA
install() {  # $1: the extras
    pip="$VENV/bin/pip install -q --disable-pip-version-check --no-compile"
    if others=$("$VENV/bin/python" -c "$OTHER_REQUIREMENTS" "$1" 2>/dev/null); then
        $pip --no-deps $TORCH_ALONE & torch_pid=$!
        set -f  # one argument per requirement, and "tritonclient[http]" is not a glob
        # shellcheck disable=SC2086
        $pip $others || { wait "$torch_pid"; exit 1; }
        set +f
        wait "$torch_pid"
    else
        $pip torch==2.13.0  # a Python without tomllib (3.10): one after the other
    fi
    $pip --no-build-isolation -e ".${1:+[$1]}"
}

# The requirements other than TORCH_ALONE: the project's, those of the extras in argv[1], and torch's others
# (torch 2.13.0's METADATA; the last pip checks them all anyway).
OTHER_REQUIREMENTS='
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = project["dependencies"] + [r for e in filter(None, sys.argv[1:]) for r in project["optional-dependencies"][e]]
torch_own = ["filelock", "typing-extensions>=4.10.0", "setuptools>=77.0.3", "jinja2", "fsspec>=0.8.5"]
print(" ".join(r.replace(" ", "") for r in wanted + torch_own if re.split("[^A-Za-z0-9._-]", r)[0] != "torch"))
'

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
