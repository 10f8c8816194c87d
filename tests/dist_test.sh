#!/usr/bin/env bash
# Data-parallel training under mpirun on loopback: ranks x batch equal one process with
# the global batch, runs repeat bit for bit, History agrees on every rank, checkpoints
# move between rank counts, and a dead rank or a mismatched model ends the job with
# an error instead of a hang. Usage: dist_test.sh DIST_CHECK LSAN_SUPPRESSIONS
set -euo pipefail
bin=$1
# Under ASan, Open MPI's leaks are suppressed by library name, which needs whole stacks
# (its libraries have no frame pointers) and its components kept loaded to the end.
export LSAN_OPTIONS="suppressions=$2:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export ASAN_OPTIONS="fast_unwind_on_malloc=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" OMPI_MCA_mca_base_component_disable_dlclose=1
export KILN_NUM_THREADS=1 OMPI_MCA_rmaps_base_oversubscribe=1
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
fail() { echo "FAIL: $*" >&2; exit 1; }
# Every launch is bounded: a hang is a failure, not a stuck CI job.
run() { timeout 120 "$@"; }
mpi() { local n=$1; shift; run mpirun -np "$n" "$bin" "$@"; }

echo "== allreduce of tensors (2 and 3 ranks)"
mpi 2 allreduce
mpi 3 allreduce

echo "== 2 ranks x batch 32 = 1 process x batch 64; 3 ranks x 32 = 1 x 96 (240 rows: a partial last batch)"
run "$bin" train --batch 64 --epochs 3 --out one64
mpi 2 train --distributed --batch 32 --epochs 3 --out two
"$bin" compare one64.weights two.weights 1e-6 || fail "2 ranks differ from one process"
run "$bin" train --batch 96 --epochs 3 --out one96
mpi 3 train --distributed --batch 32 --epochs 3 --out three
"$bin" compare one96.weights three.weights 1e-6 || fail "3 ranks differ from one process"

echo "== repeated runs are bit-identical; History is the same on every rank"
mpi 2 train --distributed --batch 32 --epochs 3 --out two_again
cmp two.weights two_again.weights || fail "two 2-rank runs differ"
cmp two.hist.0 two.hist.1 || fail "History differs between ranks 0 and 1"
cmp three.hist.0 three.hist.1 && cmp three.hist.0 three.hist.2 || fail "History differs between 3 ranks"
grep -q '^accuracy ' two.hist.0 || fail "History lacks accuracy"

echo "== a 2-rank checkpoint resumes in 1 process, and a 1-process checkpoint in 2 ranks"
mpi 2 train --distributed --batch 32 --epochs 2 --checkpoint 'r2_{epoch}.ckpt' --out r2
run "$bin" resave r2_1.ckpt r2_1_again.ckpt
cmp r2_1.ckpt r2_1_again.ckpt || fail "restoring a 2-rank checkpoint is not bit-exact"
run "$bin" train --batch 64 --epochs 2 --initial-epoch 1 --resume r2_1.ckpt --out r2_then_1
"$bin" compare r2.weights r2_then_1.weights 1e-6 || fail "1 process resuming a 2-rank checkpoint"
run "$bin" train --batch 64 --epochs 2 --checkpoint 'r1_{epoch}.ckpt' --out r1
mpi 2 train --distributed --batch 32 --epochs 2 --initial-epoch 1 --resume r1_1.ckpt --out r1_then_2
"$bin" compare r1.weights r1_then_2.weights 1e-6 || fail "2 ranks resuming a 1-process checkpoint"

echo "== a model that differs on one rank is an error on every rank"
if mpi 2 train --distributed --batch 32 --hidden-rank1 17 --out mismatch 2>mismatch.err; then fail "mismatch accepted"; fi
grep -q "rank 1's model" mismatch.err || { cat mismatch.err; fail "mismatch error does not name rank 1"; }
[ "$(grep -c "differs from rank 0" mismatch.err)" -eq 2 ] || { cat mismatch.err; fail "not every rank reported the mismatch"; }

echo "== killing rank 1 mid-epoch ends rank 0 with an error naming it; the last checkpoint stays loadable"
mpirun -np 2 "$bin" train --distributed --batch 32 --epochs 100000 --slow 3 --checkpoint kill.ckpt --pidfile rank1.pid \
  --out killed 2>killed.err &
job=$!
for _ in $(seq 600); do [ -s kill.ckpt ] && [ -s rank1.pid ] && break; sleep 0.1; done
[ -s kill.ckpt ] || { kill $job; fail "no checkpoint appeared"; }
sleep 0.3
kill -9 "$(cat rank1.pid)"
start=$(date +%s)
if timeout 60 tail --pid=$job -f /dev/null; then :; else kill -9 $job; fail "rank 0 did not end within 60 s"; fi
wait $job && fail "the job succeeded after losing a rank" || true
echo "ended $(( $(date +%s) - start )) s after the kill"
grep -E "rank 0 of 2, epoch [0-9]+, step [0-9]+: .*rank 1 \(pid [0-9]+\) exited" killed.err ||
  { cat killed.err; fail "rank 0's error does not name the step and rank 1"; }
run "$bin" resave kill.ckpt kill_again.ckpt || fail "the checkpoint left by the killed run does not load"
echo "distributed: all checks passed"
