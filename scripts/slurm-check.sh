#!/usr/bin/env bash
# The test of examples/slurm/grid.sbatch on a real one-node Slurm (scripts/slurm-local.sh):
#
#   scripts/slurm-check.sh PATH_TO_RUNNER_BINARY      # as root; under a minute on 2 cores
#
# (a) a 3-task array drains a 6-trial grid: every trial done, claimed once, started once over
#     all the tasks' logs, no duplicated metric rows;
# (b) the time-limit path: `scancel --batch --signal=USR1` (what --signal=B:USR1@120 sends) in
#     the middle of a trial; the batch script forwards it, the runner saves `last` and exits 75,
#     the script requeues its task, and the second start finishes the trial from its checkpoint
#     with the metrics of an uninterrupted run;
# (c) Slurm's own requeue (`scontrol requeue` from outside; preemption does the same): TERM
#     reaches the runner directly, once, and the trial resumes the same way.
# Prints PASS/FAIL lines, the job logs on failure, and exits 1 if anything failed. Its jobs are
# cancelled on exit, and leftovers of an earlier check (jobs named check-*) at the start.
# CHECK_KEEP=1 keeps the work directory (logs, databases) after a pass too.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 PATH_TO_RUNNER_BINARY" >&2; exit 2; }
runner=$(realpath "$1")
[ -x "$runner" ] || { echo "$0: $runner is not an executable" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
batch=$repo/examples/slurm/grid.sbatch
t0=$SECONDS

"$repo/scripts/slurm-local.sh"

# Jobs of an earlier check that was killed would hold CPUs: cancel them, wait until gone.
for name in check-a check-b check-c; do scancel --name="$name" 2>/dev/null || true; done
for _ in $(seq 60); do
    [ -z "$(squeue -h -n check-a,check-b,check-c -o %i 2>/dev/null)" ] && break
    sleep 1
done

work=$(mktemp -d /tmp/slurm-check.XXXXXX)
cd "$work"
export RUNNER=$runner

# ---- The store -----------------------------------------------------------------------------
# SQLite files in the temp dir: every task runs on this one node, where several workers may
# share one SQLite file. (The recipe's PostgreSQL path, for tasks on many hosts, is the same
# `--db`; this check does not cover it.)
db_a=$work/a.db db_b=$work/b.db db_c=$work/c.db db_ref=$work/ref.db
# q DB SQL: the rows, columns joined by '|'. Nothing (status 1) while the file does not exist.
q() {
    [ -f "$1" ] || return 1
    python3 - "$1" "$2" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
for row in db.execute(sys.argv[2]):
    print("|".join("" if v is None else str(v) for v in row))
EOF
}
# --------------------------------------------------------------------------------------------

failures=0
jobs=()
ref_pid=
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
# expect WHAT ACTUAL EXPECTED
expect() {
    if [ "$2" = "$3" ]; then pass "$1"; else fail "$1: got '$2', expected '$3'"; fi
}
# wait_until SECONDS WHAT COMMAND...: polls COMMAND every second; false after SECONDS.
wait_until() {
    local limit=$1 what=$2 end=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$end" ]; then
            fail "$what: not within ${limit} s"
            return 1
        fi
        sleep 1
    done
}
# The `scontrol show job` fields of job $1 on one line (empty once Slurm forgot the job).
job_info() { scontrol -o show job "$1" 2>/dev/null || true; }
field() { job_info "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1; }
finished() { case "$(field "$1" JobState)" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED) ;; *) return 1 ;; esac; }
requeued() { [ "$(field "$1" JobState)" = PENDING ] && [ "$(field "$1" Restarts)" = "$2" ]; }
has_last_from() { [ "$(q "$1" "select count(*) from checkpoints where kind = 'last' and step >= $2")" -ge 1 ]; }
last_step() { q "$1" "select coalesce(max(step), 0) from checkpoints where kind = 'last'"; }
# The trial ids in the "[i/n] trial ID: ..." lines (one per start of a trial) of files $@,
# as "IDxCOUNT ..." in id order.
starts() {
    cat "$@" 2>/dev/null | sed -nE 's/^\[[0-9]+\/[0-9]+\] trial ([0-9]+): .*/\1/p' |
        sort -n | uniq -c | awk '{ printf "%s%sx%s", sep, $2, $1; sep = " " }'
}
skip_requeue_delay() {
    # A requeued job waits Slurm's requeue delay (BeginTime about 2 minutes ahead) before it
    # can start again; the test does not need to wait that out.
    scontrol update JobId="$1" StartTime=now
}
cleanup() {
    local rc=$?
    for j in "${jobs[@]}"; do
        if ! finished "$j" && [ -n "$(job_info "$j")" ]; then scancel "$j" 2>/dev/null || true; fi
    done
    if [ -n "$ref_pid" ]; then kill "$ref_pid" 2>/dev/null || true; fi
    if [ "$failures" -gt 0 ] || [ "$rc" -ne 0 ]; then
        for f in "$work"/*.out; do
            [ -f "$f" ] && { echo "==== $f"; cat "$f"; }
        done
        echo "(kept $work)"
    else
        if [ -n "${CHECK_KEEP:-}" ]; then echo "(kept $work)"; else rm -rf "$work"; fi
    fi
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted"; exit 130' INT TERM HUP

# Depth-8 nets on 512 synthetic images (3x32x32, generated from the seed): seconds a trial.
grid() {  # grid NAME ITERATIONS GRID_AXES
    cat <<EOF
[experiment]
name = "$1"

[dataset]
kind = "synthetic"
train = 512
test = 128
validation = 128

[train]
iterations = $2
batch_size = 16
eval_every = 4
optimizer = { kind = "sgd", lr = 0.05 }

[grid]
$3
EOF
}
grid slurm-a 8 $'arch = ["plain", "resnet"]\ndepth = [8]\nseed = [1, 2, 3]' >grid-a.toml
# One trial of about 15 s on one core, with a `last` checkpoint at every evaluation.
grid slurm-b "${CHECK_ITERATIONS:-160}" $'arch = ["resnet"]\ndepth = [8]' >grid-b.toml
for g in grid-a.toml grid-b.toml; do
    "$runner" run "$g" --dry-run >/dev/null || { fail "$g is not a valid grid"; exit 1; }
done
# Slurm's own time limit as a backstop for every job; tasks get one core each.
opts=(--cpus-per-task=1 --mem=500M --time=5)

echo "== (a) 3 array tasks drain a 6-trial grid"
ta=$SECONDS
rc=0
RUNNER_DB=$db_a timeout 180 sbatch --wait --parsable --array=0-2%3 --job-name=check-a "${opts[@]}" \
    "$batch" grid-a.toml >a.jobid || rc=$?
ja=$(cut -d';' -f1 a.jobid)
jobs+=("$ja")
expect "(a) sbatch --wait: exit status of the array" "$rc" 0
expect "(a) trials" "$(q "$db_a" "select count(*) from trials")" 6
expect "(a) trials done" "$(q "$db_a" "select count(*) from trials where status = 'done'")" 6
expect "(a) trials claimed once (attempts = 1)" "$(q "$db_a" "select count(*) from trials where attempts = 1")" 6
expect "(a) duplicated metric rows" \
    "$(q "$db_a" "select count(*) from (select 1 from metrics group by trial_id, step, split, name having count(*) > 1)")" 0
expect "(a) one log per task" "$(find . -maxdepth 1 -name "runner-${ja}_*.out" | wc -l)" 3
expect "(a) starts per trial, all logs together" "$(starts runner-"${ja}"_*.out)" \
    "$(q "$db_a" "select id || 'x1' from trials order by id" | paste -sd' ')"
expect "(a) no trial resumed" "$(cat runner-"${ja}"_*.out | grep -c '(resuming)' || true)" 0
echo "info: trials per worker: $(q "$db_a" "select w || '=' || count(*) from (select substr(worker, 1, instr(worker, ':') - 1) as w from trials) group by w" | paste -sd' ')"
echo "info: (a) took $((SECONDS - ta)) s"

echo "== (b) USR1 to the batch shell mid-trial: the task requeues itself and resumes"
echo "== (c) scontrol requeue from outside mid-trial: Slurm requeues, the trial resumes"
tb=$SECONDS
# An uninterrupted run of the same trial, for its metrics (same thread count: deterministic).
"$runner" run grid-b.toml --db "$db_ref" --threads 1 >ref.out 2>&1 &
ref_pid=$!
jb=$(RUNNER_DB=$db_b sbatch --parsable --array=0 --job-name=check-b "${opts[@]}" "$batch" grid-b.toml | cut -d';' -f1)
jobs+=("$jb")
jc=$(RUNNER_DB=$db_c sbatch --parsable --array=0 --job-name=check-c "${opts[@]}" "$batch" grid-b.toml | cut -d';' -f1)
jobs+=("$jc")
# A task of a one-task array: name it ARRAYID_0 (the array id alone would mean every task).
tb_id=${jb}_0 tc_id=${jc}_0

# Stop each as soon as its trial has a `last` checkpoint after the second evaluation (step 8),
# watching both at once, so that neither gets near the end of its trial first.
stopped_b="" stopped_c=""
end=$((SECONDS + 120))
while [ -z "$stopped_b" ] || [ -z "$stopped_c" ]; do
    if [ -z "$stopped_b" ] && has_last_from "$db_b" 8 2>/dev/null; then
        cut_b=$(last_step "$db_b")
        scancel --batch --signal=USR1 "$tb_id" && stopped_b=1
        echo "info: (b) USR1 sent to the batch shell of $tb_id at its last checkpoint, step $cut_b"
    fi
    if [ -z "$stopped_c" ] && has_last_from "$db_c" 8 2>/dev/null; then
        cut_c=$(last_step "$db_c")
        scontrol requeue "$tc_id" && stopped_c=1
        echo "info: (c) scontrol requeue $tc_id at its last checkpoint, step $cut_c"
    fi
    [ "$SECONDS" -lt "$end" ] || break
    sleep 0.5
done
[ -n "$stopped_b" ] || fail "(b) a last checkpoint at step >= 8: not within 120 s"
[ -n "$stopped_c" ] || fail "(c) a last checkpoint at step >= 8: not within 120 s"
for part in b c; do
    if [ "$part" = b ]; then id=$tb_id db=$db_b stopped=$stopped_b; else id=$tc_id db=$db_c stopped=$stopped_c; fi
    [ -n "$stopped" ] || continue
    if wait_until 90 "($part) requeued (pending, Restarts=1)" requeued "$id" 1; then
        pass "($part) the task is requeued"
        expect "($part) the trial between the starts" "$(q "$db" "select status || ' at step ' || steps from trials")" \
            "interrupted at step $(last_step "$db")"
        skip_requeue_delay "$id"
    fi
done
for part in b c; do
    if [ "$part" = b ]; then id=$tb_id db=$db_b; else id=$tc_id db=$db_c; fi
    log=runner-${id}.out
    wait_until 150 "($part) the job finished" finished "$id" || continue
    expect "($part) job state, restarts, exit code" \
        "$(field "$id" JobState) $(field "$id" Restarts) $(field "$id" ExitCode)" "COMPLETED 1 0:0"
    expect "($part) the trial: status and attempts" "$(q "$db" "select status || ' ' || attempts from trials")" "done 2"
    expect "($part) duplicated metric rows" \
        "$(q "$db" "select count(*) from (select trial_id, step, split, name from metrics group by 1, 2, 3, 4 having count(*) > 1)")" 0
    expect "($part) starts of the trial in the task's log" "$(starts "$log")" "1x2"
    expect "($part) the second start resumed it" "$(grep -c '^\[1/1\] trial 1: .*(resuming)$' "$log" || true)" 1
    expect "($part) the runner stopped after its step (did not quit at once)" \
        "$(grep -c 'stopping after this step' "$log" || true) $(grep -c 'interrupted: a resumable checkpoint is saved' "$log" || true)" "1 1"
done
requeues_b=$(grep -c '^batch: requeued task' "runner-${tb_id}.out" || true)
expect "(b) the batch script requeued its task" "$requeues_b" 1
expect "(c) the batch script left the requeue to Slurm" "$(grep -c '^batch: requeued task' "runner-${tc_id}.out" || true)" 0

if wait_until 120 "the uninterrupted reference run" bash -c "! kill -0 $ref_pid"; then
    rc=0
    wait "$ref_pid" || rc=$?
    ref_pid=
    expect "reference run exit status" "$rc" 0
    for db in "$db_b" "$db_c"; do
        part=b
        [ "$db" = "$db_c" ] && part=c
        same=$(python3 - "$db" "$db_ref" <<'EOF'
import sqlite3, sys
rows = lambda p: sorted(sqlite3.connect(p).execute(
    "select step, epoch, split, name, value from metrics order by step, split, name").fetchall())
a, b = rows(sys.argv[1]), rows(sys.argv[2])
print("same" if a == b else f"differ: {len(a)} rows vs {len(b)}; first difference "
      + str(next(((x, y) for x, y in zip(a, b) if x != y), "in length")))
EOF
)
        expect "($part) the resumed trial's metrics equal an uninterrupted run's" "$same" same
    done
fi
echo "info: (b) and (c) took $((SECONDS - tb)) s"

echo "slurm-check: $((SECONDS - t0)) s in all"
if [ "$failures" -gt 0 ]; then
    echo "FAIL: $failures check(s) failed"
    exit 1
fi
echo "PASS: all checks"
