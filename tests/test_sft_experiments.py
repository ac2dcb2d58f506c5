"""The SFT experiments of CS336 assignment 5 as flags of the `sft` command: the data-size sweep (--n-examples:
the first N unique demonstrations) and filtered SFT (--filter-correct: only demonstrations whose final answer is
right, which removes the sloppy writer's). Each trains a few CPU steps and its loss falls."""
from __future__ import annotations

import json

import pytest

from cs336_alignment.world.tasks import sft_demonstrations
from cs336_alignment.train import sft
from cs336_alignment.train.common import parse_config
from cs336_alignment.world.verifier import gold_reward
from test_train_smoke import sft_args, train_losses


def conversations(argv: list[str]) -> list:
    return sft.load_conversations(parse_config(sft.SFTConfig, argv, "sft"))[0]


def test_n_examples_trains_on_the_first_n_unique_demonstrations(tmp_path):
    small = conversations(["--n-examples", "16", "--hasty", "0.5", "--verbosity", "0.5", "--seed", "3"])
    large = conversations(["--n-examples", "64", "--hasty", "0.5", "--verbosity", "0.5", "--seed", "3"])
    assert len(small) == 16 and small == large[:16]  # nested sets: a sweep adds data, it does not redraw it
    # --data: the first N distinct conversations of the file (after the held-out end); 0 = all of them
    path = tmp_path / "demos.jsonl"
    chats = [d["messages"] for d in sft_demonstrations(30, seed=1)]
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats[:5] + chats[:5] + chats[5:]))
    file_args = ["--data", str(path), "--n-eval-examples", "3"]  # 35 lines, 30 distinct, the last 3 held out
    assert conversations([*file_args, "--n-examples", "10"]) == chats[:10]
    assert conversations([*file_args, "--n-examples", "0"]) == chats[:27]
    with pytest.raises(ValueError, match="n_examples"):
        conversations(["--n-examples", "0"])
    # the loss falls on a small data set (the sweep's smallest point)
    sft.main(sft_args(tmp_path / "run", 20, "--n-examples", "16"))
    losses = train_losses(tmp_path / "run")
    assert sum(losses[-4:]) / 4 < sum(losses[:3]) / 3 - 1.0


def test_filter_correct_keeps_only_right_answers(tmp_path):
    args = ["--n-examples", "60", "--sloppy", "0.5", "--verbosity", "0.5", "--seed", "2"]
    demos = sft_demonstrations(60, seed=2, verbosity=0.5, sloppy=0.5)
    right = [d["messages"] for d in demos if gold_reward(d["messages"][1]["content"], d["ground_truth"])["reward"]]
    assert 15 <= len(right) <= 45 and len(right) == sum(d["writer"] == "careful" for d in demos)
    assert conversations([*args, "--filter-correct"]) == right
    assert len(conversations(args)) == 60
    with pytest.raises(ValueError, match="ground truth"):
        conversations(["--data", str(tmp_path / "x.jsonl"), "--filter-correct"])
    sft.main(sft_args(tmp_path / "run", 20, *args, "--filter-correct"))
    losses = train_losses(tmp_path / "run")
    assert sum(losses[-4:]) / 4 < sum(losses[:3]) / 3 - 1.0
