"""The AnimaX worker: a ZeroMQ ROUTER that queues and runs generation jobs (docs/protocol.md)."""
