#!/bin/sh
# The image's entry point: `IMAGE train.py --flags` runs `python train.py --flags` in the
# project folder; with no arguments, the demo: the steps of `make demo-run PY=python`, run one
# after the other by this shell, stopping at the first that fails, with its status; any other
# command as given.
#
# As the container's PID 1 this shell passes SIGTERM (docker stop) and SIGINT on to the running
# step as SIGTERM and ends with that step's status: 143 once train.py has saved its checkpoint.
# (make as PID 1 would turn that 143 into 2; a shell waiting in the foreground would never see
# the signal: the kernel drops signals to PID 1 that it has no handler for.)
set -eu

# The folder the image expects its data volume at. Docker creates a missing host folder as
# root; this image runs as uid 1000, which then cannot write there.
data_mount=${DATA_MOUNT:-/data}
if [ -d "$data_mount" ] && [ ! -w "$data_mount" ] \
    && ! awk -v dir="$data_mount" '$2 == dir && $4 ~ /^ro(,|$)/ { found = 1 } END { exit !found }' /proc/mounts
then
    uid=$(id -u) gid=$(id -g)
    cat >&2 <<EOF
error: $data_mount is not writable by this container's user (uid $uid, gid $gid); its owner is uid $(stat -c %u "$data_mount").
A host folder that Docker creates for -v HOST:$data_mount belongs to root. Prepare it on the host:
    mkdir -p HOST && sudo chown $uid:$gid HOST
or run the image as the folder's owner: docker run --user "\$(id -u):\$(id -g)" ... (see docs/docker.md).
Mount it read-only (-v HOST:$data_mount:ro) for commands that only read it.
EOF
    exit 2
fi

child= stopped=
# INT is passed on as TERM: a step started in the background by a non-interactive shell
# ignores SIGINT; train.py saves its checkpoint on SIGTERM. A signal between two steps stops
# the demo before the next one.
trap 'stopped=143; if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; fi' TERM INT

run() {  # run COMMAND...: runs it, passing signals on; returns its status
    "$@" &
    child=$!
    status=0
    wait "$child" || status=$?
    # A trapped signal ends `wait` early (status > 128) while the step is still saving: wait
    # again until the step itself has ended, for its own status.
    while kill -0 "$child" 2>/dev/null; do
        status=0
        wait "$child" || status=$?
    done
    child=
    return "$status"
}

if [ "$#" -eq 0 ]; then
    # The demo's steps have one home, the Makefile: listed by make, run here.
    steps=$(make --no-print-directory --dry-run demo-run PY=python)
    newline='
'
    IFS=$newline
    for step in $steps; do
        unset IFS
        if [ -n "$stopped" ]; then exit "$stopped"; fi
        echo "$step"
        eval "run $step" || exit "$?"
        IFS=$newline
    done
    exit 0
fi
case "$1" in
    *.py) exec python "$@" ;;
    *) exec "$@" ;;
esac
