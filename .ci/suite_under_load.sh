#!/usr/bin/env bash
# The test suite on a machine made slow on purpose: HOGS (default 4) busy-looping Python processes take the
# CPUs while `python -m pytest -q "$@"` runs. A test that breaks here depends on the machine's speed (a sleep
# as synchronisation, a short deadline, a wall-clock assertion). Afterwards it lists the processes that the
# suite left running (servers, trainings, ... that a test forgot to stop).
#
#   .ci/suite_under_load.sh                          # the whole suite
#   .ci/suite_under_load.sh tests/reliability -x     # any pytest arguments
#   HOGS=8 PYTHON=/path/to/python .ci/suite_under_load.sh ...
#
# Exit status: pytest's, or 3 if pytest passed but processes were left over.
set -u
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}
hogs=()

stop_hogs() {
    if ((${#hogs[@]})); then
        kill "${hogs[@]}" 2>/dev/null
        wait "${hogs[@]}" 2>/dev/null
        hogs=()
    fi
}
trap stop_hogs EXIT
# Ctrl-C reaches pytest too (one foreground process group): it tears its fixtures down and ends, then this
# trap exits and the EXIT trap stops the hogs. A TERM to this script alone takes effect when pytest ends.
trap 'exit 130' INT TERM

for _ in $(seq "${HOGS:-4}"); do
    python3 -c "while True: pass" &
    hogs+=($!)
done
echo "suite_under_load: ${#hogs[@]} CPU hogs running (pids ${hogs[*]})"

# Every process the suite starts inherits this tag, also one that outlived its parent and was adopted by init:
# leftovers are found by it, not by name, so other people's servers and trainings on a shared machine are not
# counted as ours.
tag="$$-$RANDOM"
start=$SECONDS
RECSYS_SUITE_UNDER_LOAD=$tag "$python" -m pytest -q "$@"
rc=$?
wall=$((SECONDS - start))
stop_hogs
echo "suite_under_load: pytest exit status $rc, wall time ${wall} s ($((wall / 60)) min $((wall % 60)) s) beside ${HOGS:-4} CPU hogs"

tagged_processes() {
    local environ pid
    for environ in /proc/[0-9]*/environ; do
        pid=${environ#/proc/}
        pid=${pid%/environ}
        # unreadable (another user's) or gone meanwhile: not ours, or not left over
        if { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qx "RECSYS_SUITE_UNDER_LOAD=$tag"; then
            echo "$pid"
        fi
    done
}

left=$(tagged_processes)
if [[ -n $left ]]; then  # a group stopped at the very end may still be exiting: one more look, 5 s later
    sleep 5
    left=$(tagged_processes)
fi
if [[ -n $left ]]; then
    echo "suite_under_load: processes left over by the suite (recsys serve/train, uvicorn, mlflow, pytest, ...):"
    # shellcheck disable=SC2086  # one pid per word
    ps -o pid,ppid,pgid,etime,args -p "$(echo $left | tr ' ' ',')"
    echo "suite_under_load: stop them with: kill $(echo $left)"
    ((rc == 0)) && rc=3
else
    echo "suite_under_load: no process left over"
fi
exit "$rc"
