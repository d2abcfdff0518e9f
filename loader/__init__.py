"""The sandboxed verify-and-load service: the only place a pickle is ever opened.

Public surface: the gRPC contract (`loader.proto.v1`, with what the .proto cannot say in
`loader.contract`, `loader.signers` and `loader.bundles`), its one client (`loader.client`, with
`loader.background`), `loader.errors` and the `python -m loader` CLI. `loader._internal` is private.
"""
