"""Test support: real services (Redis, network namespaces, TLS certificates) started by fixtures."""
