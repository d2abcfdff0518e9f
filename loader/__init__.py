"""The sandboxed verify-and-load service: the only place a pickle is ever opened.

Public surface: the gRPC contract in `loader.proto.v1` and the `python -m loader` CLI.
"""
