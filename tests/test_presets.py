"""Presets are per-stage overrides applied through the strict config loader (presets.py): every stage's config is
its class's defaults, then its preset section, then the run's wiring (the stage table's), and nothing else; the
wiring reads what the stage needs and writes its own directory; a key that is not a field of its stage is an error
naming the preset, the stage and the key."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cs336_alignment.train import presets

from cs336_alignment.pipeline import stages
from cs336_alignment.train.presets import PIPELINE_PRESETS, PRESETS, with_overrides
from cs336_alignment.pipeline.stages import SECTIONS, STAGES, check_presets, stage_config

MAIN_PRESETS = sorted(p for p in PIPELINE_PRESETS if not stage_config(p, "pipeline").lesson)  # the InstructGPT run's


def build(preset: str) -> dict:
    """Every stage config of `preset`, wired as the pipeline wires it (outputs under OUT/, shipped tiny SFT)."""
    sft_ckpt = str(stages.shipped("tiny")[1])
    configs = dict(stages.base_sft_configs(preset, Path("OUT"), 0, "cpu", 1))
    configs.update(stages.post_configs(preset, Path("OUT"), sft_ckpt, 0, "cpu", 1, 0.0))
    return {stage: {**{k: (v.replace(sft_ckpt, "<SFT>") if isinstance(v, str) else v)
                       for k, v in dataclasses.asdict(cfg).items()}, "_class": type(cfg)}
            for stage, cfg in configs.items()}


@pytest.mark.parametrize("preset", MAIN_PRESETS)
def test_stage_configs_are_defaults_then_preset_then_wiring(preset):
    sft_ckpt = str(stages.shipped("tiny")[1])
    configs = dict(stages.base_sft_configs(preset, Path("OUT"), 0, "cpu", 1))
    configs.update(stages.post_configs(preset, Path("OUT"), sft_ckpt, 0, "cpu", 1, 0.0))
    demonstrations = dict.fromkeys(("seed", "n_examples", "verbosity", "hasty", "sloppy", "split", "filter_correct"))
    dummy = stages.Wiring(Path("OUT"), 0, "cpu", 1, sft_ckpt, 0.0, demonstrations)  # sft_baseline: the SFT data
    for name, cfg in configs.items():
        section = STAGES[name].section
        assert type(cfg) is SECTIONS[section], name
        overrides = dict(PRESETS[preset].get(section, {}))
        if section == "sft_more":  # a second SFT phase: sft's overrides, then its own
            overrides = {**PRESETS[preset].get("sft", {}), **overrides}
        wired = set(STAGES[name].wiring(dummy))
        assert not wired & set(PRESETS[preset].get(section, {})), name  # a preset never sets the run's wiring
        default = dataclasses.asdict(type(cfg)())
        for field, value in dataclasses.asdict(cfg).items():
            if field not in wired:
                assert value == overrides.get(field, default[field]), (name, field)


def test_each_stage_reads_what_it_needs_and_writes_its_own_directory():
    """The stage table's wiring is the pipeline's data flow: a stage writes OUT/<its name>/, reads only the output
    of the stage it waits for (`needs`; the matched-compute baseline waits for a number, not a file), the base/SFT
    chain starts from the stage before it and every post-training stage from the SFT model."""
    w = stages.Wiring(Path("OUT"), 7, "cpu", 3, "SFT", 0.0, {"seed": 11})
    for name, stage in STAGES.items():
        wired = stage.wiring(w)
        assert (wired["out"], wired["device"], wired["threads"]) == (f"OUT/{name}", "cpu", 3), name
        reads = {v.split("/")[1] for k, v in wired.items() if k != "out" and isinstance(v, str) and v.startswith("OUT/")}
        assert reads == ({stage.needs} if stage.needs and not stage.matched_cpu_of else set()), name
        if not stage.base:
            assert wired["init"] == "SFT", name
        assert stage.matched_cpu_of in (None, stage.needs), name


@pytest.mark.parametrize("preset", MAIN_PRESETS)
def test_small_rm_stages_differ_only_in_the_reward_model(preset):
    """grpo_rm_small and bon_small are grpo_rm and bon with the small reward model's checkpoint; rm_small is the
    preset's rm_small section over the rm loop's defaults, labelled by the same annotator, sampled from SFT."""
    built = build(preset)
    small = {"reward_model": "OUT/rm_small/ckpt.pt", "out": "OUT/grpo_rm_small"}
    assert built["grpo_rm_small"] == {**built["grpo_rm"], **small}
    assert built["bon_small"] == {**built["bon"], "reward_model": "OUT/rm_small/ckpt.pt", "out": "OUT/bon_small"}
    wiring = {"name": "rm_small", "out": "OUT/rm_small", "init": "<SFT>", "seed": 0, "device": "cpu", "threads": 1,
              "length_bias": 0.0}
    expected = {**dataclasses.asdict(stages.reward_model.RMConfig()), **PRESETS[preset].get("rm_small", {}), **wiring}
    assert {k: v for k, v in built["rm_small"].items() if k != "_class"} == expected
    annotator = ("tau", "format_weight", "steps_weight", "length_bias")
    assert all(built["rm_small"][k] == built["rm"][k] for k in annotator)
    wired = stages.post_configs(preset, Path("OUT"), str(stages.shipped("tiny")[1]), 0, "cpu", 1, 0.05)
    assert wired["rm_small"].length_bias == wired["rm"].length_bias == 0.05


def test_every_preset_section_is_a_stage_config():
    assert MAIN_PRESETS == ["small", "smoke", "tiny", "tiny_rl10"]  # the others are lessons (lessons.py)
    assert set(PRESETS) - set(PIPELINE_PRESETS) == {"gpu"}  # a stage preset (sft and grpo sections)
    check_presets()
    assert stage_config("tiny_rl10", "pipeline").checkpoints == "tiny"
    assert stage_config("tiny", "pipeline").checkpoints == ""
    assert stage_config("smoke", "eval").n_problems == 8


@pytest.mark.parametrize("preset", MAIN_PRESETS)
def test_expert_iteration_samples_as_many_responses_as_grpo_gold(preset):
    """The ei stage's budget (presets.py): num_steps x prompts_per_step x group_size sampled responses,
    as many as grpo_gold's num_steps x prompts_per_step x group_size; its prompts do not repeat."""
    built = build(preset)
    ei, grpo = built["ei"], built["grpo_gold"]
    assert ei["num_steps"] * ei["prompts_per_step"] * ei["group_size"] == \
        grpo["num_steps"] * grpo["prompts_per_step"] * grpo["group_size"]
    assert ei["num_steps"] * ei["prompts_per_step"] <= ei["n_problems"]
    assert (ei["init"], ei["out"], ei["eval_every"] <= ei["num_steps"]) == ("<SFT>", "OUT/ei", True)


def test_unknown_key_names_preset_stage_and_key(monkeypatch):
    monkeypatch.setitem(PRESETS, "broken", with_overrides(PRESETS["smoke"], {"grpo": {"num_stepz": 3}}))
    with pytest.raises(ValueError, match=r"preset 'broken', stage 'grpo': unknown GRPOConfig keys \['num_stepz'\]"):
        check_presets()
    monkeypatch.setitem(PRESETS, "broken", with_overrides(PRESETS["smoke"], {"rm": {"out": "elsewhere"}}))
    with pytest.raises(ValueError, match=r"preset 'broken', stage 'rm': keys \['out'\] are set by the pipeline"):
        stages.post_configs("broken", Path("OUT"), str(stages.shipped("tiny")[1]), 0, "cpu", 1, 0.0)
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        stage_config("nope", "rm")


def test_with_overrides_copies():
    merged = with_overrides(PRESETS["tiny"], {"grpo": {"num_steps": 1}})
    assert merged["grpo"]["num_steps"] == 1 and PRESETS["tiny"]["grpo"]["num_steps"] == 24
    assert merged["rm"] == PRESETS["tiny"]["rm"] and merged["rm"] is not PRESETS["tiny"]["rm"]
    assert presets.EvalConfig().n_problems == 400
