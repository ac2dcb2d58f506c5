#!/usr/bin/env bash
# Gradescope runs this once when it builds the autograder image: Python, CPU torch and the handout's dependencies.
# `handout autograder` fills in @TORCH@ and @DEPS@ from pyproject.toml.
set -euo pipefail
apt-get update && apt-get install -y python3 python3-pip
python3 -m pip install --index-url https://download.pytorch.org/whl/cpu @TORCH@
python3 -m pip install @DEPS@
