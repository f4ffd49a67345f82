"""The one rule naming a tool's shell twin, so error messages can name both.

A leaf module (imports nothing of vermas): core modules whose errors point the reader at a
tool (`bead_list`, `mail_inbox`, `unsling`, ...) use `twin()` so a shell user is shown the
command they can type too. The tool registry (vermas/tools.py) builds its commands with
`shell_words()`, so the two never disagree.
"""

PROG = "vermas-runner"
GROUPS = ("bead", "hook", "mail", "convoy", "polecat", "rig", "verify", "mq", "formula", "mol")


def shell_words(tool: str) -> tuple[str, ...]:
    """`bead_dep_add` -> ("bead", "dep-add"); `town_status` -> ("town-status",)."""
    head, _, rest = tool.partition("_")
    if head in GROUPS and rest:
        return head, rest.replace("_", "-")
    return (tool.replace("_", "-"),)


def twin(tool: str) -> str:
    """`bead_list / \\`vermas-runner bead list\\``: the tool and its shell twin."""
    return f"{tool} / `{PROG} {' '.join(shell_words(tool))}`"
