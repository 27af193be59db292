"""Commands to probes: queued in the registry (by the CLI or the web UI), delivered on heartbeat
responses until the probe acknowledges them, their outcome recorded."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from survey6.server.errors import CommandError, UnknownProbeError
from survey6.server.registry.models import Command, Event, Probe
from survey6.wire.v1 import control_pb2

ACTIONS = ("suspend", "resume", "upload-now", "config-change", "leave")
CONFIG_KEYS = frozenset(control_pb2.ConfigChange.DESCRIPTOR.fields_by_name)


def queue_command(session: Session, probe_id: str, action: str, payload: dict[str, Any] | None = None) -> str:
    """Queues a command for a probe; returns its id.

    Raises:
        UnknownProbeError: no such probe.
        CommandError: an unknown action, a bad config change, or a probe that has left.
    """
    probe = session.get(Probe, probe_id)
    if probe is None:
        raise UnknownProbeError(f"no probe with id {probe_id!r}")
    if probe.left_at is not None:
        raise CommandError(f"probe {probe_id} has left; it takes no more commands")
    if action not in ACTIONS:
        raise CommandError(f"unknown command {action!r}; one of {', '.join(ACTIONS)}")
    payload = payload or {}
    if action == "config-change":
        unknown = set(payload) - CONFIG_KEYS
        if not payload or unknown:
            raise CommandError(f"config change keys must be among {', '.join(sorted(CONFIG_KEYS))}")
        to_proto({"action": action, "payload": payload, "id": "check"})  # type check now, not at delivery
    command_id = str(uuid.uuid4())
    session.add(Command(id=command_id, probe_id=probe_id, action=action, payload=payload))
    session.add(Event(probe_id=probe_id, kind="command", detail=f"{action} queued ({command_id})"))
    return command_id


def to_proto(command: dict[str, Any]) -> control_pb2.Command:
    """The wire form of a queued command (``id``, ``action``, ``payload``, ``issued_ns``)."""
    message = control_pb2.Command(command_id=command["id"], issued_ns=int(command.get("issued_ns", 0)))
    action = command["action"]
    if action == "suspend":
        message.suspend.SetInParent()
    elif action == "resume":
        message.resume.SetInParent()
    elif action == "upload-now":
        message.upload_now.SetInParent()
    elif action == "leave":
        message.leave.SetInParent()
    elif action == "config-change":
        try:
            message.config_change.CopyFrom(control_pb2.ConfigChange(**command["payload"]))
        except (TypeError, ValueError) as exc:
            raise CommandError(f"bad config change {command['payload']!r}: {exc}") from exc
    else:
        raise CommandError(f"unknown command {action!r}")
    return message


OUTCOMES = {
    control_pb2.COMMAND_OUTCOME_SUCCEEDED: "succeeded",
    control_pb2.COMMAND_OUTCOME_FAILED: "failed",
    control_pb2.COMMAND_OUTCOME_REJECTED: "rejected",
}
