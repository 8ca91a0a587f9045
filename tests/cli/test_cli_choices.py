"""One list of allowed values per config key (engine/config.CHOICES): the config refuses others, the
command line offers exactly these, and every key whose recipe comment lists alternatives is in it."""
import dataclasses
import re

import pytest

from ghostnetv3.cli import main
from ghostnetv3.engine import config as C
from ghostnetv3.engine import flags as F
from ghostnetv3.distill import KD_LOSSES
from ghostnetv3.rep import REP_INITS


def _listed_alternatives(comment: str) -> tuple[str, ...] | None:
    """The values a config comment names as `a | b | c` (each may carry a note in parentheses)."""
    if " | " not in comment:
        return None
    parts = comment.split(" | ")
    first = parts[0].split("(")[0].strip().split()[-1]  # "...: scaled (1/sqrt(...))" -> scaled
    return (first, *(p.split()[0].rstrip(":,") for p in parts[1:]))


def test_the_cli_and_the_config_share_one_dict():
    assert F.CHOICES is C.CHOICES
    assert C.CHOICES["rep_init"] == REP_INITS  # the values the branch BN init understands
    assert C.CHOICES["kd_loss"] == KD_LOSSES   # the losses distill implements (a layer above: not imported)


def test_every_key_whose_comment_lists_values_is_validated_from_choices():
    listed = {f.name: _listed_alternatives(F.help_text(f.name)) for f in dataclasses.fields(C.TrainConfig)}
    listed = {k: v for k, v in listed.items() if v}
    assert set(listed) == set(C.CHOICES), "a key lists values in config.py but is not in CHOICES (or back)"
    for key, values in listed.items():
        assert set(values) == set(C.CHOICES[key]), key


@pytest.mark.parametrize("key", sorted(C.CHOICES))
def test_each_choice_key_takes_its_values_and_refuses_others_naming_them(key):
    for value in C.CHOICES[key]:
        assert getattr(C.TrainConfig(**{key: value}), key) == value
    with pytest.raises(ValueError) as e:
        C.TrainConfig(**{key: "nonsense"})
    assert str(e.value) == f"{key}: 'nonsense' is not one of {', '.join(C.CHOICES[key])}"


def test_rep_init_on_the_command_line_offers_and_checks_its_values(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--rep-init", "ones"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert re.search(r"--rep-init: invalid choice: 'ones' \(choose from '?reference'?, '?scaled'?\)", err), err
