#!/usr/bin/env bash
# The GPU checks (pytest -m gpu, then bench/gpu.py) as one prepared run on a GPU machine that reaches no package
# index, such as the project's lent H200 (bench/RESULTS.md, "GPU"; its Python 3.12 has JAX's CUDA build, torch,
# numpy, scipy, h5py, matplotlib, pytest ... but not Keras, pydantic, uproot, optuna or submitit).
#
#   bench/gpu-device.sh fetch [3.12]   here, with an index: the wheels hhscan needs that such a machine may lack,
#                                      at this venv's versions, into bench/.wheels/ (≈ 27 MB, git-ignored)
#   bench/gpu-device.sh tests          there, in the repo root (bench/.wheels carried along): installs what is
#   bench/gpu-device.sh bench          missing into /tmp/site, then `pytest -m gpu` (200 s cap) and/or
#   bench/gpu-device.sh all            `python bench/gpu.py` (360 s cap), each under its own time limit
#
# GPU_BENCH_ARGS go to bench/gpu.py (`--tiny` for a dry run of this script on a CPU, `--baselines jax`).
# Outputs go to $OUT (the device tool's folder; bench/work/gpu otherwise), each written as soon as it exists, so a
# run stopped at its limit keeps what it measured: device.txt, tests.txt, RESULTS.md (a copy of bench/RESULTS.md
# with the GPU sections rewritten: copy it back over bench/RESULTS.md), gpu.json, bench.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-bench/.wheels}
PYTHON=${PYTHON:-python3}  # the machine's Python (the lent H200: 3.12)
# What hhscan imports beyond a CUDA JAX + torch machine's own packages, with what these need in turn.
PACKAGES="keras absl-py namex optree pydantic pydantic-core annotated-types typing-inspection typing_extensions
  uproot awkward awkward-cpp cramjam xxhash fsspec packaging submitit cloudpickle optuna alembic sqlalchemy mako
  markupsafe colorlog greenlet tqdm pyyaml cmaes mplhep mplhep-data uhi"

fetch() {
  local python_version=${1:-3.12} venv=.venv/bin/python pinned=()
  for package in $PACKAGES; do  # this venv's version where it has one: the device then runs what CI tests
    version=$("$venv" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$package" 2>/dev/null)
    pinned+=("$package${version:+==$version}")
  done
  mkdir -p "$WHEELS"
  "$venv" -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$WHEELS" "${pinned[@]}"
  du -sh "$WHEELS"
}

install_missing() {
  # A wheel is installed (into /tmp/site, first on PYTHONPATH) unless the machine has that package at its version
  # or newer: the machine's own numpy, JAX and torch stay as they are.
  "$PYTHON" - "$WHEELS" <<'EOF'
import importlib.metadata as metadata, pathlib, re, subprocess, sys

def key(version):
    return tuple(int(part) if part.isdigit() else 0 for part in re.split(r"[.+-]", version)[:4])

wanted = []
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    try:
        present = metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        present = None
    if present is None or key(present) < key(version):
        wanted.append(str(wheel))
print(f"installing {len(wanted)} wheels into /tmp/site", flush=True)
if wanted and subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                               "--no-cache-dir", "--upgrade", "--target", "/tmp/site", *wanted]).returncode:
    python = ".".join(map(str, sys.version_info[:2]))
    sys.exit(f"pip could not install {sys.argv[1]}'s wheels for Python {python}: fetch them for it with "
             f"'bench/gpu-device.sh fetch {python}' (and carry {sys.argv[1]})")
EOF
}

run_on_device() {
  local what=$1 out=${OUT:-bench/work/gpu}
  mkdir -p "$out"
  export KERAS_BACKEND=jax  # Keras' default, TensorFlow, is not there
  if ! "$PYTHON" -c "import keras, pydantic, uproot, optuna, submitit, mplhep" 2>/dev/null; then
    install_missing || exit 1
  fi
  if ! "$PYTHON" -c "import hhscan" 2>/dev/null; then  # the editable install's stand-in: scan/ is hhscan
    mkdir -p /tmp/site && ln -sfn "$PWD/scan" /tmp/site/hhscan
  fi
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  "$PYTHON" -c "import hhscan.cli, keras, uproot, optuna, submitit, mplhep, pydantic; print('imports: ok')" || exit 1
  { nvidia-smi -L; "$PYTHON" -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
    "$PYTHON" -c "from hhscan.learning import model; print(model.device_description())"; } > "$out/device.txt" 2>&1
  cat "$out/device.txt"
  if [[ $what == tests || $what == all ]]; then
    timeout 200 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -ra --durations=5 > "$out/tests.txt" 2>&1
    echo "pytest -m gpu: exit $?"; tail -n 15 "$out/tests.txt"
  fi
  if [[ $what == bench || $what == all ]]; then
    cp bench/RESULTS.md "$out/RESULTS.md"
    timeout 360 "$PYTHON" bench/gpu.py --output "$out/RESULTS.md" --json "$out/gpu.json" ${GPU_BENCH_ARGS:-} \
      > "$out/bench.txt" 2>&1
    echo "bench/gpu.py: exit $?"; tail -n 30 "$out/bench.txt"
  fi
}

case ${1:-} in
  fetch) fetch "${2:-3.12}" ;;
  tests | bench | all) run_on_device "$1" ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
