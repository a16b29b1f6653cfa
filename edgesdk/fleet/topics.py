"""The topic tree, namespaced per group (docs/FLEET.md draws it):

  edgesdk/G/release                 retained, QoS 1: the signed release (devices targeted so far)
  edgesdk/G/chunk/RELEASE/N         retained, QoS 1: the package's N-th chunk (no file server)
  edgesdk/G/device/ID/state         retained, QoS 1: the device's state and results (its agent)
  edgesdk/G/device/ID/online        retained, QoS 1: {"online": bool}; the broker sends false as the will
  edgesdk/G/device/ID/cmd           retained, QoS 1: a signed command for this device (rollback)

Group, device and release names are 1-64 letters, digits and '._-' (no '/', '+', '#': a name is
never a wildcard or a second level)."""

from __future__ import annotations

import re

from edgesdk.errors import EdgesdkError

ROOT = "edgesdk"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(value: object, what: str, where: str = "") -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise EdgesdkError(
            f"{where + ': ' if where else ''}{what} {value!r}: 1-64 letters, digits and '._-', "
            "starting with a letter or digit"
        )
    return value


def release(group: str) -> str:
    return f"{ROOT}/{group}/release"


def chunk(group: str, release_id: str, index: int) -> str:
    return f"{ROOT}/{group}/chunk/{release_id}/{index}"


def chunks(group: str, release_id: str) -> str:
    return f"{ROOT}/{group}/chunk/{release_id}/+"


def device(group: str, device_id: str, leaf: str) -> str:
    """LEAF: state, online or cmd."""
    return f"{ROOT}/{group}/device/{device_id}/{leaf}"


def devices(group: str | None, leaf: str) -> str:
    """Every device's LEAF topic in GROUP (every group when None)."""
    return f"{ROOT}/{group or '+'}/device/+/{leaf}"


def parse_device(topic: str) -> tuple[str, str, str] | None:
    """(group, device, leaf) of a device topic, None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != ROOT or parts[2] != "device":
        return None
    return parts[1], parts[3], parts[4]


def chunk_index(topic: str, group: str, release_id: str) -> int | None:
    prefix = f"{ROOT}/{group}/chunk/{release_id}/"
    if not topic.startswith(prefix) or not topic[len(prefix) :].isdigit():
        return None
    return int(topic[len(prefix) :])
