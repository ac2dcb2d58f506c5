"""The main job end to end: `python -m cs336_alignment pipeline --preset smoke` into a temporary directory
runs every stage (pretrain, SFT, reward model, DPO, GRPO x2, the matched-compute SFT baseline, PPO,
best-of-N, expert iteration), two at a time in worker processes, and writes the report, the plots and
report.json with the numbers filled in; --jobs 1 (in process) gives the same numbers; skipping a stage skips the stages that need
it; shipping base/SFT checkpoints is reproducible bit for bit."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time

import pytest

from cs336_alignment.pipeline import stages as stages_module
from cs336_alignment.pipeline.runner import main
from cs336_alignment.train.presets import PRESETS
from cs336_alignment.pipeline.report import write_report
from tests.metric_names import undocumented

STAGE_FILES = ("pretrain/ckpt.pt", "sft/ckpt.pt", "rm/ckpt.pt", "rm/preferences_train.jsonl",
               "rm/preferences_eval.jsonl", "dpo/ckpt.pt", "grpo_gold/ckpt.pt", "sft_baseline/ckpt.pt",
               "grpo_rm/ckpt.pt", "ppo/ckpt.pt", "bon/bon.json", "ei/ckpt.pt")
BASELINE = "SFT + more SFT (matched CPU)"
EI = "Expert iteration"
PLOTS = ("training_curves.png", "overoptimization.png", "gold_vs_kl.png")


def smoke(out, *flags: str) -> dict:
    return main(["--preset", "smoke", "--out", str(out), "--threads", "1", "--device", "cpu", *flags])


def numbers(stage: dict) -> dict:
    """A stage's results without its times (keys *_s) and paths, which differ between two identical runs."""
    return {k: v for k, v in stage.items() if not k.endswith("_s") and not isinstance(v, str)}


def test_smoke_pipeline_writes_report(tmp_path):
    out = tmp_path / "smoke"
    cpu0 = time.process_time()
    returned = smoke(out, "--jobs", "2")
    cpu_here = time.process_time() - cpu0

    for path in STAGE_FILES + ("report.md", "report.json") + PLOTS:
        assert (out / path).is_file() and (out / path).stat().st_size > 0, path
        if path.endswith(".png"):
            assert (out / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for stage in ("pretrain", "sft", "rm", "dpo", "grpo_gold", "sft_baseline", "grpo_rm", "ppo", "bon", "ei"):
        assert (out / stage / "metrics.jsonl").is_file(), stage
    assert not undocumented(out.glob("*/metrics.jsonl")), "a logged metric name missing from the README's table"

    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(returned))
    n, pool = PRESETS["smoke"]["eval"]["n_problems"], PRESETS["smoke"]["bon"]["group_size"]
    models = report["models"]
    assert list(models)[:8] == ["base", "SFT", BASELINE, "GRPO (gold)", EI, "GRPO (RM)", "PPO", "DPO"]
    assert [k for k in models if k.startswith("BoN-")][:3] == ["BoN-1", "BoN-2", "BoN-4"]
    for label, m in models.items():
        if m.get("accuracy/greedy") is not None:
            assert abs(m["accuracy/greedy"] * n - round(m["accuracy/greedy"] * n)) < 1e-9, label  # a count
    assert models["SFT"]["kl/ref"] == 0.0, "the SFT policy is its own reference"
    # the worked share of every chat policy (its evaluation's samples) and of every best-of-N row (the selected)
    for label, m in models.items():
        if m["format"] == "chat" and "oracle" not in label:
            assert 0.0 <= m["response/worked_share"] <= 1.0, label
    assert models["BoN-4"]["kl/ref"] == pytest.approx(math.log(4) - 3 / 4)
    assert {"eval/rm/accuracy", "eval/rm/ece", "eval/rm/ceiling_accuracy"} <= set(report["rm"])
    assert len(report["bon"]["rows"]) == int(math.log2(pool)) + 1
    assert all(stage["wall_s"] > 0 and stage["cpu_s"] > 0 for stage in report["stages"].values())

    # --jobs 2: the post-training stages and the evaluations ran in two worker processes, not in this one
    assert report["jobs"] == 2
    worker_cpu_s = sum(s["cpu_s"] for name, s in report["stages"].items() if name not in ("pretrain", "sft"))
    assert cpu_here < report["cpu_s_total"] - 0.8 * worker_cpu_s

    # The matched-compute baseline: SFT continued on SFT's demonstrations for grpo_gold's training CPU seconds
    stages = report["stages"]
    config = json.loads((out / "sft_baseline" / "metrics.jsonl").read_text().splitlines()[0])["config"]
    sft_config = json.loads((out / "sft" / "metrics.jsonl").read_text().splitlines()[0])["config"]
    assert config["max_cpu_s"] == stages["grpo_gold"]["train_cpu_s"] > 0
    assert stages["sft_baseline"]["train_cpu_s"] >= config["max_cpu_s"] and stages["sft_baseline"]["steps"] >= 1
    assert config["init"] == str(out / "sft" / "ckpt.pt")
    assert all(config[k] == sft_config[k] for k in ("seed", "n_examples", "verbosity"))
    assert report["sft"]["cpu_s"] > 0 and report["sft"]["curve"][-1]["step"] == PRESETS["smoke"]["sft"]["num_steps"]

    # Paired differences on the same problems: every post-trained policy minus SFT, and GRPO minus the baseline
    paired = {(p["a"], p["b"]): p for p in report["paired"]}
    assert set(paired) == {(label, "SFT") for label in (BASELINE, "GRPO (gold)", EI, "GRPO (RM)", "PPO", "DPO")} | \
           {("GRPO (gold)", BASELINE), (EI, "GRPO (gold)")}
    for (a, b), p in paired.items():  # the mean paired difference is the difference of the two accuracies
        assert p["greedy"][0] == pytest.approx(models[a]["accuracy/greedy"] - models[b]["accuracy/greedy"])
        assert p["sampled"][0] == pytest.approx(models[a]["reward/gold_mean"] - models[b]["reward/gold_mean"])
        assert p["greedy"][1] >= 0 and p["sampled"][1] >= 0

    # expert iteration: its own stage, with as many sampled responses as grpo_gold (the preset's ei section)
    ei_config = json.loads((out / "ei" / "metrics.jsonl").read_text().splitlines()[0])["config"]
    grpo_config = json.loads((out / "grpo_gold" / "metrics.jsonl").read_text().splitlines()[0])["config"]
    assert ei_config["init"] == str(out / "sft" / "ckpt.pt") and stages["ei"]["steps"] == ei_config["num_steps"]
    assert ei_config["num_steps"] * ei_config["prompts_per_step"] * ei_config["group_size"] == \
        grpo_config["num_steps"] * grpo_config["prompts_per_step"] * grpo_config["group_size"]

    md = (out / "report.md").read_text()
    assert all(plot in md for plot in PLOTS)
    assert "| KL to SFT | length | prose lines | distinct-2 | worked share | gold within worked |" in md
    for label in ("SFT", BASELINE, EI, "PPO", "DPO", "BoN-4"):
        row = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
        m = models[label]
        assert f"| {m['kl/ref']:.2f} | {m['response/length_mean']:.1f} | {m['response/prose_lines_mean']:.2f} |" in row
        m = models[label]
        within = m.get("reward/gold_mean_worked")
        cell = "—" if within is None else f"{100 * within:.1f}% ±"
        assert f"| {100 * m['response/worked_share']:.1f}% | {cell}" in row, row
        if label != "BoN-4":  # the policies evaluated on their own samples
            assert ("reward/gold_mean_worked" in m) == (m["response/worked_share"] > 0), label
            assert ("reward/gold_mean_hasty" in m) == (m["response/worked_share"] < 1), label
    for heading in ("**GRPO vs SFT vs matched-compute SFT**", "**SFT held-out accuracy along training**",
                    "**Differences on the same test problems**", f"| GRPO (gold) − {BASELINE} |",
                    f"| {EI} − GRPO (gold) |", "**Expert iteration vs GRPO (gold)**",
                    "**Stage times**", "| sft_baseline |", "| ei |", "--jobs 2"):
        assert heading in md, heading

    # The RM's answer-checking line, when its held-out pairs differ in gold (the smoke model's rarely do)
    report["rm"].update({"eval/rm/gold_pairs": 0.25, "eval/rm/correct_preferred": 0.6,
                         "eval/rm/sft_correct_preferred": 0.75})
    (tmp_path / "again").mkdir()
    labels = {s.name: s.label for s in stages_module.STAGES.values()}
    md = write_report(tmp_path / "again", report, labels).read_text()
    assert ("On the 25.0% of held-out pairs where one response is correct and the other is not, it scores the "
            "correct one higher 60.0% of the time; the SFT policy's own mean token log-prob does so 75.0%") in md

    # --jobs 1 (one stage at a time, in this process) gives the same numbers: each stage seeds itself. Not the
    # baseline's: its length is measured CPU time.
    sequential = smoke(tmp_path / "sequential", "--jobs", "1")
    assert {k: v for k, v in sequential["models"].items() if k != BASELINE} == \
           {k: v for k, v in models.items() if k != BASELINE}
    for name, stage in stages.items():
        if name != "sft_baseline":
            assert numbers(sequential["stages"][name]) == numbers(stage), name


def test_skip_and_unknown_stage(tmp_path):
    report = smoke(tmp_path, "--jobs", "1", "--skip", "grpo_gold,grpo_rm,ppo,dpo,ei")
    assert set(report["models"]) >= {"base", "SFT", "BoN-1"} and "PPO" not in report["models"]
    assert set(report["stages"]) == {"pretrain", "sft", "rm", "bon", "eval"}  # no grpo_gold: no sft_baseline
    with pytest.raises(ValueError, match="not a post-training stage"):
        main(["--preset", "smoke", "--out", str(tmp_path), "--skip", "sft"])


def test_length_bias_adds_the_small_reward_model(tmp_path):
    """--length-bias turns on the small reward model's stages (rm_small, grpo_rm_small, bon_small): a second
    reward model from the same annotator, the preset's rm_small section, and GRPO and best-of-N against it, in
    the report next to the reward model's; --no-small-rm turns them off."""
    out = tmp_path / "biased"
    report = smoke(out, "--jobs", "1", "--length-bias", "0.05", "--skip", "dpo,grpo_gold,ppo,ei")
    assert set(report["stages"]) == {"pretrain", "sft", "rm", "grpo_rm", "bon", "rm_small", "grpo_rm_small",
                                     "bon_small", "eval"}
    config = json.loads((out / "rm_small" / "metrics.jsonl").read_text().splitlines()[0])["config"]
    assert config["length_bias"] == 0.05 and config["n_prompts"] == PRESETS["smoke"]["rm_small"]["n_prompts"]
    grpo_config = json.loads((out / "grpo_rm_small" / "metrics.jsonl").read_text().splitlines()[0])["config"]
    assert grpo_config["reward_model"] == str(out / "rm_small" / "ckpt.pt") and grpo_config["reward"] == "rm"
    assert list(report["models"])[:4] == ["base", "SFT", "GRPO (RM)", "GRPO (small RM)"]
    assert ("GRPO (RM)", "GRPO (small RM)") in {(p["a"], p["b"]) for p in report["paired"]}
    assert {"eval/rm/accuracy", "eval/rm/ceiling_accuracy"} <= set(report["rm_small"])
    pool = PRESETS["smoke"]["bon"]["group_size"]
    assert [r["n"] for r in report["bon_small"]["rows"]] == [2 ** i for i in range(int(math.log2(pool)) + 1)]
    assert max(r["reward/gold_minus_peak"] for r in report["bon_small"]["rows"]) == 0.0
    assert not undocumented(out.glob("*/metrics.jsonl"))
    md = (out / "report.md").read_text()
    for heading in ("**Reward model**", "**Small reward model**", "**Best-of-N** with the reward model",
                    "**Best-of-N** with the small reward model", "| GRPO (RM) − GRPO (small RM) |", "| rm_small |",
                    "length bias = 0.05 per token"):
        assert heading in md, heading
    assert all((out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for plot in PLOTS)

    off = smoke(tmp_path / "off", "--jobs", "1", "--length-bias", "0.05", "--no-small-rm",
                "--skip", "dpo,grpo_gold,ppo,ei,grpo_rm,bon")
    assert set(off["stages"]) == {"pretrain", "sft", "rm", "eval"}


def test_evaluations_fill_idle_workers_and_never_hold_a_stage_back(monkeypatch):
    """run_post_training with stand-in loops (the stage table's train functions) on a 2-thread pool. rm takes longest; while it runs,
    grpo_gold and sft_baseline use the other worker, and the evaluations that need neither rm nor a stage still
    waiting (base) start only when no stage can start. Each evaluation starts after the stages it needs, and one
    that needs a stage that does not run is an error."""
    from concurrent.futures import ThreadPoolExecutor

    events = []

    def loop(stage, seconds):
        def train(cfg):
            events.append(("start", stage))
            time.sleep(seconds)
            events.append(("end", stage))
            return {"checkpoint": f"{stage}.pt", "cpu_s": 0.01}
        return train

    def evaluate(label):
        events.append(("start", label))
        time.sleep(0.01)
        events.append(("end", label))
        return label.upper()

    durations = {"rm": 0.3, "grpo_gold": 0.05, "sft_baseline": 0.05, "bon": 0.05}
    for s, t in durations.items():
        monkeypatch.setitem(stages_module.STAGES, s, dataclasses.replace(stages_module.STAGES[s], train=loop(s, t)))
    configs = {s: stages_module.sft.SFTConfig() for s in durations}  # ignored by the stand-ins
    calls = {"base": ((), lambda results: (evaluate, "base")),
             "SFT": (("rm",), lambda results: (evaluate, "sft")),
             "bon": (("bon", "rm"), lambda results: (evaluate, results["bon"]["checkpoint"]))}
    with ThreadPoolExecutor(2) as pool:
        results, evaluated = stages_module.run_post_training(list(durations), configs, pool, 2, {}, calls)
    assert set(results) == set(durations) and evaluated == {"base": "BASE", "SFT": "SFT", "bon": "BON.PT"}
    at = {event: i for i, event in enumerate(events)}
    assert at[("start", "base")] > at[("start", "sft_baseline")], "an evaluation waits while a stage can start"
    assert at[("start", "base")] < at[("end", "rm")], "and fills a worker that has no stage to run"
    assert at[("start", "sft")] > at[("end", "rm")] and at[("start", "bon.pt")] > at[("end", "bon")]
    with pytest.raises(ValueError, match="need stages that do not run"):
        stages_module.run_post_training(["grpo_gold"], configs, stages_module.InProcess(), 1, {},
                                        {"SFT": (("rm",), lambda results: (evaluate, "sft"))})
    with pytest.raises(ValueError, match=r"stages \['sft_baseline'\].*need stages that do not run"):
        stages_module.run_post_training(["sft_baseline"], configs, stages_module.InProcess(), 1, {})


def test_ship_rebuilds_bit_for_bit(tmp_path, monkeypatch):
    digests = []
    for i in range(2):
        monkeypatch.setattr(stages_module, "SHIPPED_DIR", tmp_path / f"shipped{i}")
        smoke(tmp_path / f"run{i}", "--ship")
        digests.append({f: hashlib.sha256((tmp_path / f"shipped{i}" / "smoke" / f).read_bytes()).hexdigest()
                        for f in ("base.pt", "sft.pt")})
    assert digests[0] == digests[1], "the shipped checkpoints are a pure function of the command"
    shipped_metrics = (tmp_path / "shipped0" / "smoke" / "sft.metrics.jsonl").read_text()
    config = json.loads(shipped_metrics.splitlines()[0])["config"]
    assert str(tmp_path) not in shipped_metrics, "no path of the machine that built them"
    assert (config["out"], config["init"]) == ("runs/run0/sft", "runs/run0/pretrain/ckpt.pt")
    # A run then starts from the shipped models instead of training them.
    # Skipping rm and grpo_gold skips every stage that needs them (dpo, grpo_rm, ppo, bon; sft_baseline); ei too.
    report = smoke(tmp_path / "from_shipped", "--jobs", "1", "--skip", "rm,grpo_gold,ei")
    assert report["base_sft"] == "shipped" and set(report["stages"]) == {"eval"}
    assert set(report["models"]) == {"base", "SFT"}


def test_tiny_rl10_is_tiny_with_ten_times_the_grpo_budget(tmp_path):
    """The preset that measurably lifts GRPO above SFT (README): tiny's shipped models, 10x the GRPO samples
    (and expert iteration's, which samples as many responses as GRPO (gold): tests/test_presets.py)."""
    from cs336_alignment.train.grpo import GRPOConfig

    tiny, long = PRESETS["tiny"], PRESETS["tiny_rl10"]
    assert {k: v for k, v in long.items() if k not in ("grpo", "ei", "pipeline")} == \
           {k: v for k, v in tiny.items() if k not in ("grpo", "ei", "pipeline")}, \
        "same model, SFT, RM, DPO, PPO, evaluation"
    assert long["pipeline"]["checkpoints"] == "tiny" and stages_module.shipped("tiny")
    sft = str(stages_module.shipped("tiny")[1])
    configs = {name: stages_module.post_configs(name, tmp_path, sft, 0, "cpu", 1, 0.0)
               for name in ("tiny", "tiny_rl10")}
    t, g = configs["tiny"]["grpo_gold"], configs["tiny_rl10"]["grpo_gold"]
    assert g.num_steps * g.prompts_per_step == 10 * t.num_steps * t.prompts_per_step
    for stage in ("grpo_gold", "grpo_rm"):
        cfg = configs["tiny_rl10"][stage]
        assert (cfg.num_steps, cfg.prompts_per_step, cfg.lr, cfg.min_lr, cfg.n_problems) == (120, 64, 1e-4, 1e-4, 12000)
        assert cfg.num_steps * cfg.prompts_per_step <= cfg.n_problems, "no prompt seen twice"
        default = GRPOConfig(init=sft)  # tiny keeps the loop's own schedule and prompt pool
        tiny_cfg = configs["tiny"][stage]
        assert (tiny_cfg.lr, tiny_cfg.min_lr, tiny_cfg.n_problems) == (default.lr, default.min_lr, default.n_problems)


def test_preset_sft_writers_reach_the_sft_and_baseline_configs(tmp_path, monkeypatch):
    """A preset's writer pool and demonstration split reach the SFT stage, and the matched-compute baseline
    trains on exactly the demonstrations the SFT checkpoint says it was trained on."""
    import torch

    from cs336_alignment.lm.checkpoint import save_checkpoint

    preset = {**PRESETS["smoke"], "sft": {**PRESETS["smoke"]["sft"], "hasty": 0.5, "split": "sft"}}
    monkeypatch.setitem(PRESETS, "writers", preset)
    sft = dict(stages_module.base_sft_configs("writers", tmp_path, 0, "cpu", 1))["sft"]
    assert (sft.hasty, sft.split, sft.sloppy, sft.filter_correct) == (0.5, "sft", 0.0, False)
    ckpt = tmp_path / "sft.pt"
    save_checkpoint(torch.nn.Linear(1, 1), None, 0, ckpt, config=dataclasses.asdict(sft))
    baseline = stages_module.post_configs("writers", tmp_path, str(ckpt), 0, "cpu", 1, 0.0)["sft_baseline"]
    assert all(getattr(baseline, k) == getattr(sft, k) for k in ("seed", "n_examples", "verbosity", "hasty", "split"))


def test_the_stage_table_is_consistent():
    """Everything the run, the scheduler and the report know of a stage is its entry in stages.STAGES: each
    names a preset section, waits only for a stage of its own phase, compares only with a labelled stage, and the
    post-training stages start in a total order."""
    table = stages_module.STAGES
    assert all(name == stage.name and stage.section in stages_module.SECTIONS for name, stage in table.items())
    for stage in table.values():
        assert stage.needs is None or (stage.needs in table and table[stage.needs].base == stage.base), stage.name
        assert stage.versus is None or (table[stage.versus].label and stage.label), stage.name
        assert stage.matched_cpu_of is None or stage.matched_cpu_of == stage.needs, stage.name
    post = [s for s in table.values() if not s.base]
    assert sorted(s.start for s in post) == list(range(len(post))), "one start rank per post-training stage"
    assert stages_module.POST_STAGES[0] == "rm", "the longest stage starts first"
    assert len(stages_module.LABELS) == sum(1 for s in table.values() if s.label), "report labels are unique"
