#!/bin/bash
# Every measurement of BENCHMARKS.md, in order, each with the load average before and after it.
#
#   benchmarks/benchmark_page.sh OUT_DIR [FASTCONV_PYTHON] [TORCH_PYTHON] [BEFORE_PYTHON]
#
# FASTCONV_PYTHON: a Python with fastconv (and threadpoolctl, matplotlib) installed, default python3;
# TORCH_PYTHON: a Python with PyTorch, used only in processes that do not import fastconv;
# BEFORE_PYTHON: an install of an older commit for benchmarks/compare_training_step.py (skipped if unset).
# KERAS_TF_PYTHON: a Python with keras and tensorflow(-cpu), the third library of epochs3 (skipped if unset).
# STEPS="peak gemm suite epochs epochs3 compare distributed" chooses the steps (default: all, in that order;
# distributed needs mpi4py and an mpiexec beside FASTCONV_PYTHON, pip install "fastconv[mpi]");
# EPOCH_ROUNDS (default 2) the alternated rounds of epochs; EPOCH3_ROUNDS (default 3) those of epochs3,
# EPOCH3_THREADS (default 2) its thread count for every library, EPOCH3_IMAGES (default 60000) its MNIST images.
set -u
out=${1:?usage: benchmark_page.sh OUT_DIR [FASTCONV_PYTHON] [TORCH_PYTHON] [BEFORE_PYTHON]}
fc=${2:-python3}
torch=${3:-}
before=${4:-}
steps=${STEPS:-peak gemm suite epochs epochs3 compare distributed}
keras_tf=${KERAS_TF_PYTHON:-}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
log="$out/load.log"

load() { cut -d' ' -f1-3 /proc/loadavg; }
step() {  # step NAME COMMAND...: runs it from an empty directory, output in OUT_DIR/NAME.txt
    local name=$1; shift
    echo "$name start $(date -u +%H:%M:%S) load $(load)" | tee -a "$log"
    (cd "$(mktemp -d)" && "$@") > "$out/$name.txt" 2>&1
    local status=$?
    echo "$name end   $(date -u +%H:%M:%S) load $(load) exit $status" | tee -a "$log"
}

for s in $steps; do
    case $s in
    peak) step peak "$fc" -m fastconv bench peak ;;
    gemm) step gemm "$fc" -m fastconv bench gemm --threads 1 2 --rounds 5 ;;
    suite)
        step suite "$fc" -m fastconv bench ${torch:+--torch-python "$torch"} --json "$out/suite.json" \
            --plot "$out/bench.png" ;;
    epochs)  # alternated, fastconv first, each library in its own process
        for round in $(seq 1 "${EPOCH_ROUNDS:-2}"); do
            step "epochs-fastconv-$round" "$fc" "$here/benchmarks/epochs.py" fastconv
            [ -n "$torch" ] && step "epochs-torch-$round" "$torch" "$here/benchmarks/epochs.py" torch
        done ;;
    epochs3)  # seed and keras-cnn: fastconv and Keras on TensorFlow run the same Keras script, PyTorch its
        # twin; one library per process, in reverse order every other round; the FMA peak before and after
        e3=(--models seed keras-cnn --threads "${EPOCH3_THREADS:-2}")
        step epochs3-floor-start "$fc" "$here/benchmarks/epochs.py" floor "${e3[@]}"
        e3+=(--images "${EPOCH3_IMAGES:-60000}")
        libs="fastconv${torch:+ torch}${keras_tf:+ keras-tf}"
        for round in $(seq 1 "${EPOCH3_ROUNDS:-3}"); do
            order=$libs
            [ $((round % 2)) -eq 0 ] && order=$(echo "$libs" | tr ' ' '\n' | tac | tr '\n' ' ')
            for lib in $order; do
                case $lib in
                fastconv) step "epochs3-$lib-$round" "$fc" "$here/benchmarks/epochs.py" fastconv --keras "${e3[@]}" ;;
                torch) step "epochs3-$lib-$round" "$torch" "$here/benchmarks/epochs.py" torch "${e3[@]}" ;;
                keras-tf) step "epochs3-$lib-$round" "$keras_tf" "$here/benchmarks/epochs.py" keras-tf "${e3[@]}" ;;
                esac
            done
        done
        step epochs3-floor-end "$fc" "$here/benchmarks/epochs.py" floor --models seed keras-cnn \
            --threads "${EPOCH3_THREADS:-2}" ;;
    compare)
        [ -n "$before" ] && step compare "$fc" "$here/benchmarks/compare_training_step.py" --before "$before" ;;
    distributed)  # 2 MPI ranks against 1 process and PyTorch DDP, each variant in its own processes
        step distributed "$fc" -m fastconv bench distributed ${torch:+--torch-python "$torch"} \
            --json "$out/distributed.json" ;;
    *) echo "unknown step $s" >&2 ;;
    esac
done
