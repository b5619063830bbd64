"""Clients of the HTTP API: the CLI, the web UI's client and the gRPC gateway. No torch, diffusers
or imageio here (tests/unit/test_clients.py)."""
