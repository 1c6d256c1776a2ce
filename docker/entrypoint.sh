#!/bin/sh
# The image's entry point: `IMAGE train.py --flags` runs `python train.py --flags` in the
# project folder; with no arguments, the demo (make demo's job); any other command as given.
set -eu
if [ "$#" -eq 0 ]; then
    exec make --no-print-directory demo-run PY=python
fi
case "$1" in
    *.py) exec python "$@" ;;
    *) exec "$@" ;;
esac
