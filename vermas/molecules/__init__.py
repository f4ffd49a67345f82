"""Molecules: TOML formulas (formula.py) cooked into protos and poured into tracked
workflows of beads that an agent walks step by step (molecule.py)."""
