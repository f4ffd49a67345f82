"""Formula parsing, validation and cooking (vermas.molecules.formula): each error names the
file, the step and the field; bd-only fields are warnings; discovery order; built-ins."""

from __future__ import annotations

from pathlib import Path

import pytest

from vermas.errors import InvalidInput, NotFound
from vermas.molecules import formula as f

HEAD = 'formula = "demo"\ndescription = "demo of {{who}}"\nversion = 1\ntype = "workflow"\n'
WHO = '[vars.who]\ndescription = "who"\nrequired = true\n'


def step(sid: str, needs: list[str] | None = None, title: str = "t", extra: str = "") -> str:
    needs_line = f"needs = {needs!r}\n".replace("'", '"') if needs else ""
    return f'[[steps]]\nid = "{sid}"\ntitle = "{title}"\n{needs_line}{extra}'


def parse_error(text: str) -> str:
    with pytest.raises(InvalidInput) as exc:
        f.parse(text, "x.formula.toml")
    return str(exc.value)


def test_parse_and_cook_substitutes_vars() -> None:
    text = HEAD + WHO + step("a", title="do {{who}}", extra='acceptance = "{{who}} done"\n') + step("b", ["a"])
    formula = f.parse(text, "x.formula.toml")
    proto = f.cook(formula, {"who": "nux"})
    assert [s.id for s in proto.steps] == ["a", "b"]
    assert proto.steps[0].title == "do nux" and proto.steps[0].acceptance == "nux done"
    assert proto.description == "demo of nux" and proto.steps[1].needs == ["a"]
    assert formula.steps[0].title == "do {{who}}"  # cooking leaves the formula as it was


def test_duplicate_step_id() -> None:
    msg = parse_error(HEAD + step("a") + step("a"))
    assert "x.formula.toml" in msg and "step 'a'" in msg and "'id'" in msg and "duplicate" in msg


def test_unknown_need() -> None:
    msg = parse_error(HEAD + step("a", ["zz"]))
    assert "x.formula.toml" in msg and "step 'a'" in msg and "'needs'" in msg and "'zz'" in msg


def test_cycle_is_named() -> None:
    msg = parse_error(HEAD + step("a", ["b"]) + step("b", ["a"]) + step("c"))
    assert "cycle a -> b -> a" in msg and "'needs'" in msg and "x.formula.toml" in msg


def test_self_cycle() -> None:
    assert "cycle a -> a" in parse_error(HEAD + step("a", ["a"]))


def test_find_cycle_pure() -> None:
    assert f.find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert f.find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


def test_missing_required_var() -> None:
    formula = f.parse(HEAD + WHO + step("a"), "x.formula.toml")
    with pytest.raises(InvalidInput, match=r"x.formula.toml: var 'who': required var is missing"):
        f.cook(formula, {})


def test_var_breaks_enum_and_pattern() -> None:
    text = HEAD.replace("{{who}}", "x") + (
        '[vars.size]\nenum = ["s", "m"]\ndefault = "s"\n[vars.ticket]\npattern = "[A-Z]+-[0-9]+"\ndefault = "AB-1"\n'
    ) + step("a")
    formula = f.parse(text, "x.formula.toml")
    assert f.cook(formula).vars == {"size": "s", "ticket": "AB-1"}
    with pytest.raises(InvalidInput, match=r"var 'size': field 'enum': 'xl' is not one of s, m"):
        f.cook(formula, {"size": "xl"})
    with pytest.raises(InvalidInput, match=r"var 'ticket': field 'pattern': 'ab-1' does not match"):
        f.cook(formula, {"ticket": "ab-1"})
    with pytest.raises(InvalidInput, match=r"var 'nope': not declared"):
        f.cook(formula, {"nope": "1"})


def test_unknown_placeholder_names_step_and_field() -> None:
    formula = f.parse(HEAD.replace("{{who}}", "x") + step("a", extra='acceptance = "{{ghost}} ok"\n'), "x.formula.toml")
    with pytest.raises(InvalidInput) as exc:
        f.cook(formula)
    assert "x.formula.toml: step 'a': field 'acceptance': unknown {{ghost}}" in str(exc.value)


def test_bad_fields_are_errors_naming_them() -> None:
    assert "field 'title'" in parse_error(HEAD + '[[steps]]\nid = "a"\n')
    assert "field 'priority'" in parse_error(HEAD + step("a", extra="priority = 9\n"))
    assert "field 'type'" in parse_error(HEAD.replace('"workflow"', '"expansion"') + step("a"))
    assert "field 'steps'" in parse_error(HEAD)
    assert "field 'formula'" in parse_error(step("a"))
    assert "toml" in parse_error("formula = ")
    assert "field 'pattern'" in parse_error(HEAD + '[vars.v]\npattern = "("\n' + step("a"))


def test_bd_fields_are_warnings_not_errors() -> None:
    text = HEAD.replace("{{who}}", "x") + 'phase = "liquid"\n[vars.v]\ndefault = "1"\ntype = "string"\n' + step(
        "a", extra='assignee = "x"\n[[steps.gate]]\nkind = "human"\n')
    formula = f.parse(text, "x.formula.toml")
    assert any("'phase'" in w and "top level" in w for w in formula.warnings)
    assert any("'type'" in w and "var 'v'" in w for w in formula.warnings)
    assert any("'assignee'" in w and "step 'a'" in w for w in formula.warnings)
    assert any("'gate'" in w for w in formula.warnings)
    assert f.cook(formula).warnings == formula.warnings


def test_discovery_order_rig_then_town_then_builtin(tmp_path: Path) -> None:
    town, clone = tmp_path / "town", tmp_path / "clone"
    for where, desc in ((town, "town"), (clone, "rig")):
        (where / ".beads" / "formulas").mkdir(parents=True)
        (where / ".beads" / "formulas" / "review.formula.toml").write_text(
            f'formula = "review"\ndescription = "{desc}"\n' + step("a"))
    (town / ".beads" / "formulas" / "mine.formula.toml").write_text('formula = "mine"\n' + step("a"))
    assert f.load("review", town, clone).description == "rig"
    assert f.load("review", town).description == "town"
    assert f.load("review", tmp_path / "empty").source == "builtin:review.formula.toml"
    names = {i.name: i.source for i in f.list_formulas(town, clone)}
    assert names["mine"].endswith("mine.formula.toml") and names["polecat-work"].startswith("builtin:")
    with pytest.raises(NotFound, match="no formula 'ghost'; formulas: mine, polecat-work, review, test-first"):
        f.load("ghost", town, clone)


@pytest.mark.parametrize("name", ["polecat-work", "test-first", "review"])
def test_builtins_parse_without_warnings(name: str, tmp_path: Path) -> None:
    formula = f.load(name, tmp_path)
    assert formula.warnings == [] and len(formula.steps) >= 3
    assert all(s.acceptance for s in formula.steps)


GASTOWN_STYLE = """formula = "report"
description = "Report on {{target}}"
[vars.target]
required = true
[vars.note]
description = "optional, no default"
[vars.convoy]
default = "hq-c1"
[[steps]]
id = "report"
title = "Report {{target}}{{note}}"
description = \"\"\"## Summary: {{convoy.title}}
{{#each failures}}- {{this}}{{/each}}
{{#if failures}}failed{{else}}all good{{/if}}
bd show {{convoy}}\"\"\"
"""


def test_handlebars_words_and_fields_of_vars_stay_for_the_agent() -> None:
    proto = f.cook(f.parse(GASTOWN_STYLE, "report.formula.toml"), {"target": "gt"})
    step = proto.steps[0]
    assert step.title == "Report gt"  # a declared var with no value is empty
    assert "## Summary: {{convoy.title}}" in step.description  # a field of a var: left as written
    assert "{{#each failures}}- {{this}}{{/each}}" in step.description
    assert "{{else}}all good{{/if}}" in step.description and "bd show hq-c1" in step.description
    with pytest.raises(InvalidInput, match=r"step 'report': field 'description': unknown \{\{failures\.count\}\}"):
        f.cook(f.parse(GASTOWN_STYLE.replace("{{convoy.title}}", "{{failures.count}}"), "r.formula.toml"),
               {"target": "gt"})


def test_composition_is_refused_by_name() -> None:
    text = 'formula = "shiny-secure"\nextends = ["shiny"]\n[compose]\naspects = ["audit"]\n'
    with pytest.raises(InvalidInput, match="field 'extends': formula composition .* not supported"):
        f.parse(text, "shiny-secure.formula.toml")


def test_a_broken_file_is_listed_with_its_error_not_hiding_the_others(tmp_path: Path) -> None:
    folder = tmp_path / ".beads" / "formulas"
    folder.mkdir(parents=True)
    (folder / "convoyish.formula.toml").write_text('formula = "convoyish"\ntype = "convoy"\n' + step("a"))
    (folder / "fine.formula.toml").write_text('formula = "fine"\nphase = "liquid"\n' + step("a"))
    infos = {i.name: i for i in f.list_formulas(tmp_path)}
    assert infos["convoyish"].error is not None and "'convoy' is not supported" in infos["convoyish"].error
    assert infos["fine"].error is None and infos["fine"].steps == 1 and infos["fine"].warnings == 1
    assert infos["review"].error is None  # the built-ins are still there
