#!/bin/bash
# Run a benchmark command in a session of its own whose scheduling group (Linux autogroup) has nice -15, so
# that work of other sessions on the same machine (test runs, editors, other jobs) takes little of the CPU
# from it. Everything the command starts itself (CPU hogs, peer toolkits) runs in that group too and competes
# with it as on an otherwise idle machine. With autogroup on (/proc/sys/kernel/sched_autogroup_enabled = 1)
# plain `nice` only orders processes within one session, hence the group's own nice. Needs root for the
# negative value; without it the command runs at normal priority and this says so.
#
#   benchmarks/with_priority.sh .venv/bin/python benchmarks/sasrec_speed.py --hogs 4 --skip-recbole --epochs 1
set -u
if [ "$#" -eq 0 ]; then
    echo "usage: benchmarks/with_priority.sh COMMAND [ARGS...]" >&2
    exit 2
fi
exec setsid bash -c 'if echo -15 > /proc/self/autogroup 2>/dev/null; then
    echo "with_priority: $(cat /proc/self/autogroup)" >&2
else
    echo "with_priority: could not set the autogroup nice (not root, or no autogroup): normal priority" >&2
fi
exec "$@"' with_priority "$@"
