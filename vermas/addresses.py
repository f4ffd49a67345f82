"""Agent addresses (BD_ACTOR form) and the roles they imply.

Addresses are identities, never file paths: every one is checked against a strict
pattern before use, so a path built from a valid address cannot escape its folder.
"""

from __future__ import annotations

import re
from enum import Enum

from pydantic import BaseModel

from vermas.errors import InvalidInput

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
RIG_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
TOWN_ROLES = ("mayor", "deacon", "overseer")
RIG_ROLES = ("witness", "refinery")
NAMED_ROLES = {"polecats": "polecat", "crew": "crew"}

ALLOWED_FORMS = (
    "mayor, deacon, overseer, <rig>/witness, <rig>/refinery, <rig>/polecats/<name>, <rig>/crew/<name> "
    "(rig: lowercase letter then [a-z0-9_-], name: [a-z0-9][a-z0-9_-], each at most 32 characters)"
)


class Role(str, Enum):
    MAYOR = "mayor"
    DEACON = "deacon"
    OVERSEER = "overseer"
    WITNESS = "witness"
    REFINERY = "refinery"
    POLECAT = "polecat"
    CREW = "crew"


# Town-level coordinators; what each may do is written once in vermas/permissions.py.
COORDINATOR_ROLES = frozenset({Role.MAYOR, Role.DEACON, Role.OVERSEER})


class Address(BaseModel, frozen=True):
    """A parsed, validated agent address."""

    role: Role
    rig: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        if self.rig is None:
            return self.role.value
        if self.name is None:
            return f"{self.rig}/{self.role.value}"
        folder = "polecats" if self.role is Role.POLECAT else "crew"
        return f"{self.rig}/{folder}/{self.name}"

    @property
    def session_name(self) -> str:
        """A tmux-safe session name: tmux forbids ':' and '.', so '/' becomes '-'."""
        return "vermas-" + str(self).replace("/", "-")

    @property
    def is_privileged(self) -> bool:
        """A town-level coordinator (mayor, deacon, overseer). What that allows (editing,
        assigning, closing, unslinging any bead; not reading others' mail, which is the
        overseer's alone) is decided in vermas/permissions.py, nowhere else."""
        return self.role in COORDINATOR_ROLES


def parse_address(value: str) -> Address:
    """Parse an address or raise InvalidInput naming the allowed forms."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"address must be a non-empty string; allowed: {ALLOWED_FORMS}")
    parts = value.split("/")
    if len(parts) == 1 and parts[0] in TOWN_ROLES:
        return Address(role=Role(parts[0]))
    if len(parts) == 2 and RIG_RE.fullmatch(parts[0]) and parts[1] in RIG_ROLES:
        return Address(role=Role(parts[1]), rig=parts[0])
    if (
        len(parts) == 3
        and RIG_RE.fullmatch(parts[0])
        and parts[1] in NAMED_ROLES
        and NAME_RE.fullmatch(parts[2])
    ):
        return Address(role=Role(NAMED_ROLES[parts[1]]), rig=parts[0], name=parts[2])
    raise InvalidInput(f"invalid address {value[:80]!r}; allowed: {ALLOWED_FORMS}")


def is_rig_name(value: str) -> bool:
    """True for a bare rig name (the sling target that spawns a polecat)."""
    return bool(RIG_RE.fullmatch(value)) and value not in TOWN_ROLES
