#!/usr/bin/env bash
# Makes what `scripts/export.py --format=tfjs` needs, once: the tensorflowjs converter in
# an environment of its own (it pins TensorFlow 2.19, which cannot sit beside 2.21) and
# @tensorflow/tfjs for Node, which checks the converted model.
#
#   scripts/setup_tfjs.sh     (RESEARCH_TFJS_ENV and RESEARCH_TFJS_NODE move the places)
set -euo pipefail
env=${RESEARCH_TFJS_ENV:-$HOME/.cache/research/tfjs-env}
node=${RESEARCH_TFJS_NODE:-$HOME/.cache/research/tfjs-node}
command -v npm > /dev/null || { echo "error: npm (Node.js) is needed to check TF.js models"; exit 1; }
python3 -m venv "$env"
# ydf 0.12 and later are built against protobuf 6, which TensorFlow 2.19 does not allow:
# the converter then fails on import.
"$env/bin/pip" install -q tensorflowjs "ydf<0.12"
mkdir -p "$node"
npm install --silent --prefix "$node" @tensorflow/tfjs
echo "TF.js converter in $env, @tensorflow/tfjs in $node"
