#!/usr/bin/env bash
# Regenerates the protobuf message modules (and their .pyi type stubs) from src/pyztunnel/protocols/proto.
# The output is committed so that installing pyztunnel needs no code generator.
set -euo pipefail
cd "$(dirname "$0")/../src/pyztunnel/protocols"
../../../.venv/bin/python -m grpc_tools.protoc -Iproto --python_out=_pb --pyi_out=_pb proto/*.proto
touch _pb/__init__.py
