"""Designer: a bead's requirements -> a Specification (title, requirements, acceptance criteria)."""

from __future__ import annotations

from collections.abc import Mapping

from vermas.inspector.backend import RoleCall
from vermas.inspector.models import Specification


def prompt(bead: Mapping[str, object], source_acceptance_criteria: str) -> str:
    """The bead as the Designer reads it. `source_acceptance_criteria` is what a human wrote,
    never the Designer's own earlier rendering (which would make the spec drift on each run)."""
    parts = [
        f"Bead {bead['id']} ({bead['issue_type']}, priority P{bead['priority']}, status {bead['status']})",
        f"Title: {bead['title']}",
    ]
    for heading, text in (("Description", bead.get("description")), ("Design", bead.get("design")),
                          ("Acceptance criteria (as written)", source_acceptance_criteria),
                          ("Notes", bead.get("notes"))):
        if text:
            parts += ["", f"## {heading}", str(text)]
    parts += ["", "Write the Specification for this bead."]
    return "\n".join(parts)


def call(bead: Mapping[str, object], source_acceptance_criteria: str, system: str) -> RoleCall[Specification]:
    return RoleCall(role="designer", system=system, prompt=prompt(bead, source_acceptance_criteria),
                    output=Specification)
