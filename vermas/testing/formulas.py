"""Generated formulas for the molecule benchmark and crash tests: a chain of any length, written
where `mol_pour` finds it (the town's `.beads/formulas/`)."""

from __future__ import annotations

import json

from vermas.molecules import formula as formulas
from vermas.town import Town


def chain_formula(name: str, steps: int) -> str:
    """A formula of `steps` steps: each needs the one before, every third also the first; one
    var, `who`, with a default (so it cooks with no vars given)."""
    lines = [f'formula = "{name}"', f'description = "{steps} chained steps for {{{{who}}}}"',
             "[vars.who]", 'default = "bench"']
    for i in range(1, steps + 1):
        needs = ([f"s{i - 1}"] if i > 1 else []) + (["s1"] if i % 3 == 0 and i > 2 else [])
        lines += ["[[steps]]", f'id = "s{i}"', f'title = "step {i} for {{{{who}}}}"',
                  f'description = "do step {i} of the chain"', f"needs = {json.dumps(needs)}",
                  f'acceptance = "step {i} is done"']
    return "\n".join(lines) + "\n"


def install(town: Town, name: str, steps: int) -> formulas.Proto:
    """Write the chain into the town's .beads/formulas/ (for mol_pour and the shell twins); its proto."""
    folder = town.root / ".beads" / "formulas"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}{formulas.SUFFIX}").write_text(chain_formula(name, steps))
    return formulas.cook(formulas.load(name, town.root))
