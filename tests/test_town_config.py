"""town.toml: rewrites keep the user's comments and layout; the whole config is validated
on load, with one error naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_repo

from vermas import rig
from vermas.errors import InvalidInput
from vermas.town import Town

USER_TOML = """\
# My town. Do not lose this comment.
[agent]
command = "claude"   # the CLI on my PATH
args = ["--model", "sonnet"]

[town]
prefix = "hq"
name = "mytown"

# rigs below
[rigs.first]
git_url = "file:///nowhere"
prefix = "fi"  # first rig
default_branch = "main"
"""


def test_rig_add_keeps_comments_and_order(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "t")
    (town.root / "town.toml").write_text(USER_TOML)
    town.reload_config()
    rig.add(town, "second", str(make_repo(tmp_path / "upstream")), max_polecats=3)
    text = (town.root / "town.toml").read_text()
    assert text.startswith(USER_TOML)  # every line of the user's file, in the user's order
    assert "[rigs.second]" in text and "max_polecats = 3" in text
    assert text.index("[agent]") < text.index("[town]")
    reopened = Town.open(town.root)
    assert reopened.config.rigs["second"].max_polecats == 3
    assert reopened.config.rigs["first"].prefix == "fi"
    assert reopened.config.agent.args == ["--model", "sonnet"]


def test_bad_prefix_in_town_toml_names_the_file_and_field(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "t")
    config = town.root / "town.toml"
    config.write_text(config.read_text().replace('prefix = "hq"', 'prefix = "Bad_Prefix"'))
    with pytest.raises(InvalidInput) as err:
        Town.open(town.root)
    message = str(err.value)
    assert str(config) in message and "prefix" in message and "Bad_Prefix" in message
    assert "lowercase letter" in message


def test_out_of_range_values_are_field_bounds(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "t")
    config = town.root / "town.toml"
    config.write_text(config.read_text() + '\n[rigs.gt]\ngit_url = "x"\nprefix = "gt"\nmax_polecats = 0\n')
    with pytest.raises(InvalidInput, match=r"rigs\.gt\.max_polecats: Input should be greater than or equal to 1"):
        Town.open(town.root)


def test_rig_add_refuses_a_bad_max_polecats_before_cloning(tmp_path: Path) -> None:
    town, _ = Town.init(tmp_path / "t")
    before = (town.root / "town.toml").read_text()
    with pytest.raises(InvalidInput, match="max_polecats"):
        rig.add(town, "gt", str(make_repo(tmp_path / "upstream")), max_polecats=65)
    assert not (town.root / "gt").exists()
    assert (town.root / "town.toml").read_text() == before
