"""gRPC services: thin servicers over the server's plain functions, and the servers' factory."""
