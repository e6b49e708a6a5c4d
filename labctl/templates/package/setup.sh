#!/usr/bin/env bash
# labctl __VERSION__ autograder setup for exercise __EXERCISE__ (written by `labctl package gradescope`).
# Gradescope runs this once, as root, while it builds the autograder image (the network is on then).
# labctl itself is installed from the copy inside this zip: nothing of labctl is downloaded at grading
# time; only its Python dependencies come from PyPI, here.
set -euo pipefail
SOURCE=/autograder/source
GRADER=__GRADER_DIR__

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends python3 python3-venv
python3 -m venv "$GRADER/venv"
"$GRADER/venv/bin/pip" install --no-cache-dir "$SOURCE/project"
# The student's server runs as a uid of its own on this machine: it may not read the hidden checks.
chmod -R go-rwx "$SOURCE" "$GRADER"
"$GRADER/venv/bin/labctl" --project "$SOURCE/project" list
