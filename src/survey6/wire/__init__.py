"""The survey6 wire API: modules generated from ``proto/survey6/v1`` by ``./scripts/gen-proto``.

Import the versioned modules, e.g. ``from survey6.wire.v1 import control_pb2, control_pb2_grpc``.
"""
