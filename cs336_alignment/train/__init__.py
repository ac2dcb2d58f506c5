"""One readable training loop per stage: pretrain, sft, reward_model, dpo, grpo, ppo."""
