"""The stage configs are built from shared blocks (config_blocks.py): every field keeps a docstring for --help
(inherited ones too), `with_defaults` changes a default and nothing else, and a renamed field's old flag (or old
preset key) still sets the new field."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

import pytest

from cs336_alignment.pipeline import stages
from cs336_alignment.train.config_blocks import OptimConfig, RunConfig, with_defaults
from cs336_alignment.train.common import build_parser, config_from_dict, field_docs, parse_config

CONFIGS = sorted({cls for cls in stages.SECTIONS.values() if hasattr(cls, "FLAG_ALIASES")}, key=lambda c: c.__name__)
ALIASES = [(cls, old, new) for cls in CONFIGS for old, new in cls.FLAG_ALIASES.items()]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_its_docstring_in_the_help(cls):
    docs = field_docs(cls)
    assert all(docs.get(f.name) for f in dataclasses.fields(cls)), [f.name for f in dataclasses.fields(cls)
                                                                       if not docs.get(f.name)]
    helps = {a.dest: a.help for a in build_parser(cls, "x")._actions}
    assert all(helps[f.name].startswith(docs[f.name][:40].replace("%", "%%")) for f in dataclasses.fields(cls))


def test_the_renamed_fields_are_the_ones_the_changelog_names():
    renamed = {(cls.__name__, old, new) for cls, old, new in ALIASES}
    assert renamed == {("EIConfig", "n_ei_steps", "num_steps"), ("EIConfig", "rollouts_per_prompt", "group_size"),
                       ("BoNConfig", "rm", "reward_model"), ("BoNConfig", "pool_size", "group_size"),
                       ("RMConfig", "k_samples", "group_size"), ("DPOConfig", "k_samples", "group_size"),
                       ("PPOConfig", "ppo_epochs", "epochs_per_rollout_batch")}


@pytest.mark.parametrize("cls,old,new", ALIASES, ids=lambda x: getattr(x, "__name__", x))
def test_an_old_flag_and_an_old_key_set_the_renamed_field(cls, old, new):
    kind = typing.get_type_hints(cls)[new]
    value = "runs/x/ckpt.pt" if kind is str else kind(3)
    for flag in (f"--{old.replace('_', '-')}", f"--{old}"):
        assert getattr(parse_config(cls, [flag, str(value)], "x"), new) == value
    assert getattr(config_from_dict(cls, {old: value}), new) == value
    assert f"--{old.replace('_', '-')}" in build_parser(cls, "x").format_help()  # documented as the old name
    assert old not in {f.name for f in dataclasses.fields(cls)}


def test_with_defaults_changes_the_default_only():
    @dataclass
    @with_defaults(name="demo", lr=3e-3)
    class Demo(OptimConfig, RunConfig):
        extra: int = 1
        """an own field"""

    base = [(f.name, f.type) for f in dataclasses.fields(RunConfig)] + [(f.name, f.type)
                                                                      for f in dataclasses.fields(OptimConfig)]
    fields = dataclasses.fields(Demo)
    assert [f.name for f in fields] == [name for name, _ in base] + ["extra"]  # the inherited place, then its own
    assert typing.get_type_hints(Demo)["lr"] is float and typing.get_type_hints(Demo)["name"] is str
    assert (Demo().name, Demo().lr, Demo().num_steps, Demo(lr=1.0).lr) == ("demo", 3e-3, OptimConfig().num_steps, 1.0)
    assert field_docs(Demo)["lr"] == field_docs(OptimConfig)["lr"] and field_docs(Demo)["extra"] == "an own field"
    assert (RunConfig().name, OptimConfig().lr) == ("run", 1e-4)  # the bases keep theirs
    with pytest.raises(TypeError, match=r"\['not_a_field'\]"):
        with_defaults(not_a_field=1)(type("Bad", (RunConfig,), {}))
