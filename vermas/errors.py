"""Domain exceptions. The MCP layer maps each to a tool error carrying its message,
so every message must say what was wrong and what is allowed."""


class VermasError(Exception):
    """Base of every expected failure; its message is shown to agents verbatim."""


class InvalidInput(VermasError):
    """The caller passed something malformed; nothing was written."""


class NotFound(VermasError):
    """An id or address names nothing in this town."""


class Conflict(VermasError):
    """The store's state forbids the change (occupied hook, already hooked, ...)."""


class Forbidden(VermasError):
    """The acting agent may not do this (reading another's mail, polecat-only tools)."""


class TownNotFound(VermasError):
    """No town at the given directory."""


class ConfigError(InvalidInput):
    """town.toml cannot be read or fails validation. The message is one line naming the file
    and what is wrong; a long-running loop keeps its last good config when it sees this."""


class StorageFull(VermasError):
    """The filesystem holding a town file is full (or over quota): the write was refused
    whole (a store transaction rolled back, an export left as it was); the message names
    the file and the free space, so whoever reads it knows where to make room."""
