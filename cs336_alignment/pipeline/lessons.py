"""Lessons: pipeline presets that run their own list of stages (several SFT variants, then preference tuning and
RL from one of them) and write their own report, with the pipeline's config machinery and worker pool.

A preset names its lesson in its pipeline section (``PRESETS["safety"]["pipeline"] == {"lesson": "safety", ...}``);
``pipeline.run`` then hands the run to `run_lesson` with the lesson of that name (`pipeline.LESSONS`). A lesson is

  * its stages (`LessonStage`): a name (the run's sub-directory), the preset section that configures its loop
    (stages.SECTIONS: sft, dpo, grpo, ...), the loop, the wiring (the fields the run sets: data files, the model
    it starts from, seed, hardware) and the stage it starts from (`needs`; None = the shipped SFT model);
  * `prepare`: writes the data files its stages read, under the run directory, before any stage starts;
  * `evaluate`: a picklable call that measures one checkpoint (run in a worker, like a stage, as soon as the
    checkpoint exists); the shipped SFT model is measured too, as the row "SFT (shipped)";
  * `write_report`: report.md and its plots from the report dict (also written to report.json).

The schedule is the pipeline's (stages.run_post_training's rule, written for a stage list): at most --jobs things
at once; a stage starts when the stage it needs is done, an evaluation when its stage is done and no stage is
ready to start. The numbers do not depend on --jobs (every stage's randomness is seeded).
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import Any

from cs336_alignment.train.presets import PRESETS
from cs336_alignment.pipeline.stages import Wiring as StageWiring
from cs336_alignment.pipeline.stages import cpu_seconds, make_pool, shipped, stage_config
from cs336_alignment.train.common import config_from_dict


@dataclasses.dataclass(frozen=True)
class Wiring(StageWiring):
    """What the run decides for every stage of a lesson: the pipeline's wiring (run directory, seed, hardware; its
    sft_ckpt is the shipped SFT model, which a stage with no `needs` starts from) and --overwrite."""
    overwrite: bool = False

    def common(self, stage: str, needs: str | None) -> dict:
        """Directory, seed, hardware and the model a stage starts from."""
        return dict(out=str(self.out / stage), seed=self.seed, device=self.device, threads=self.threads,
                    init=self.ckpt(needs) if needs else self.sft_ckpt, overwrite=self.overwrite)


@dataclasses.dataclass(frozen=True)
class LessonStage:
    """One stage of a lesson: its loop, configured by the preset's `section` plus the run's wiring."""
    name: str
    section: str
    train: Callable[[Any], dict]                 # picklable (a module-level function or a functools.partial)
    wiring: Callable[[Wiring], dict]             # extra config fields the run sets (data files, name, ...)
    needs: str | None = None                     # the stage whose checkpoint it starts from; None = shipped SFT
    label: str = ""                              # its row in the report


@dataclasses.dataclass(frozen=True)
class Lesson:
    """A lesson's stages, data, evaluation and report (module docstring)."""
    name: str                                                     # also its preset section (its config class)
    config: type                                                  # the lesson's config class
    stages: Callable[[Any], list[LessonStage]]                    # stages(lesson config), in the report's order
    prepare: Callable[[Path, Any, int], None]                     # prepare(run dir, lesson config, seed)
    evaluate: Callable[..., dict]                                 # evaluate(ckpt, run dir, lesson cfg, eval cfg,
                                                                  #          seed, device, threads) -> metrics
    write_report: Callable[[Path, dict], Path]                    # write_report(run dir, report) -> report.md


def lesson_config(lesson: Lesson, preset_name: str):
    """The lesson's config: its class's defaults with the preset's section named after the lesson.

    Raises:
        ValueError: "preset 'P', lesson 'L': ..." for a key that is not a field.
    """
    try:
        return config_from_dict(lesson.config, dict(PRESETS[preset_name].get(lesson.name, {})))
    except (TypeError, ValueError) as e:
        raise ValueError(f"preset {preset_name!r}, lesson {lesson.name!r}: {e}") from None


def _timed(fn: Callable, *args) -> tuple[Any, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - t0, time.process_time() - c0


def run_lesson(lesson: Lesson, preset_name: str, out_dir: Path, seed: int = 0, device: str = "auto",
               threads: int = 1, jobs: int = 2, overwrite: bool = False) -> dict:
    """Run a lesson in `out_dir` (already checked and locked by the pipeline): prepare its data, train its stages
    from the shipped SFT model, evaluate the shipped model and every stage's, write report.json and the lesson's
    report. Returns the report dict.

    Raises:
        ValueError: the preset's checkpoints are not shipped, a stage needs one that is not in the lesson, or a
            preset key is not a field.
    """
    t_start, c_start = time.perf_counter(), cpu_seconds()
    cfg = lesson_config(lesson, preset_name)
    eval_cfg = stage_config(preset_name, "eval")
    shipped_as = stage_config(preset_name, "pipeline").checkpoints or preset_name
    ready = shipped(shipped_as)
    if ready is None:
        raise ValueError(f"lesson {lesson.name!r} starts from the shipped models of preset {shipped_as!r}, which are "
                         f"missing (data/checkpoints/{shipped_as}/)")
    wiring = Wiring(out_dir, seed, device, threads, str(ready[1]), overwrite=overwrite)
    stage_list = lesson.stages(cfg)
    names = [s.name for s in stage_list]
    for s in stage_list:
        if s.needs and s.needs not in names:
            raise ValueError(f"lesson {lesson.name!r}: stage {s.name!r} needs {s.needs!r}, which is not a stage")
    lesson.prepare(out_dir, cfg, seed)
    configs = {s.name: stage_config(preset_name, s.section, **{**wiring.common(s.name, s.needs), **s.wiring(wiring)})
               for s in stage_list}
    by_name = {s.name: s for s in stage_list}

    def evaluation(ckpt: str) -> tuple:
        return (lesson.evaluate, ckpt, out_dir, cfg, eval_cfg, seed, device, threads)

    results: dict[str, dict] = {}
    evaluated: dict[str, tuple] = {}
    seconds: dict[str, dict] = {}
    waiting, to_evaluate, running = list(names), {"SFT (shipped)": evaluation(wiring.sft_ckpt)}, {}
    with make_pool(jobs) as pool:
        while waiting or to_evaluate or running:
            for name in [n for n in waiting if by_name[n].needs is None or by_name[n].needs in results]:
                if len(running) == jobs:
                    break
                waiting.remove(name)
                running[pool.submit(_timed, by_name[name].train, configs[name])] = ("stage", name)
            if not any(by_name[n].needs is None or by_name[n].needs in results for n in waiting):
                for label in list(to_evaluate):
                    if len(running) == jobs:
                        break
                    running[pool.submit(_timed, *to_evaluate.pop(label))] = ("eval", label)
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                kind, name = running.pop(future)
                value, wall_s, cpu_s = future.result()
                if kind == "stage":
                    results[name] = value
                    seconds[name] = {"wall_s": wall_s, "cpu_s": cpu_s, "train_cpu_s": value.get("cpu_s")}
                    to_evaluate[by_name[name].label or name] = evaluation(value["checkpoint"])
                else:
                    evaluated[name] = value
                    seconds[f"eval {name}"] = {"wall_s": wall_s, "cpu_s": cpu_s}
    order = ["SFT (shipped)"] + [by_name[n].label or n for n in names]
    report = {"name": out_dir.name, "preset": preset_name, "lesson": lesson.name, "seed": seed, "jobs": jobs,
              "threads": threads, "lesson_config": dataclasses.asdict(cfg), "eval_config": dataclasses.asdict(eval_cfg),
              "stages": {n: {"label": by_name[n].label or n, "needs": by_name[n].needs or "SFT (shipped)"}
                         for n in names},
              "models": {label: evaluated[label] for label in order}, "seconds": seconds,
              "preset_config": PRESETS[preset_name]}
    report["wall_s_total"] = time.perf_counter() - t_start
    report["cpu_s_total"] = cpu_seconds() - c_start  # this process and its workers
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    path = lesson.write_report(out_dir, report)
    print(f"wrote {path} and report.json in {out_dir} ({report['wall_s_total']:.0f} s wall, "
          f"{report['cpu_s_total']:.0f} s CPU over {jobs} job(s))")
    return report
