"""The lottery run: arguments, schedule, granularity strategies, rewinding, mask enforcement, run state and
resume, distributed checks, the round engine, and its two front doors `LotteryTrainer` and `LotteryCallback`."""
