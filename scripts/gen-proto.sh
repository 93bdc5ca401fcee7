#!/usr/bin/env bash
# Regenerates the protobuf message modules (and their .pyi type stubs) from src/pyztunnel/protocols/proto.
# The output is committed so that installing pyztunnel needs no code generator.
# protoc writes imports between our own files as top-level modules (`import envoy_core_pb2`); they live in the
# package pyztunnel.protocols._pb, so those lines are rewritten (google.protobuf imports stay as they are).
set -euo pipefail
cd "$(dirname "$0")/../src/pyztunnel/protocols"
../../../.venv/bin/python -m grpc_tools.protoc -Iproto --python_out=_pb --pyi_out=_pb proto/*.proto
own=$(cd proto && ls *.proto | sed 's/\.proto$/_pb2/' | paste -sd'|')
sed -i -E "s/^import (${own}) as /from pyztunnel.protocols._pb import \1 as /" _pb/*_pb2.py _pb/*_pb2.pyi
touch _pb/__init__.py
