"""The command-and-control server: enrolment, liveness, commands, uploads, registry and web UI."""
