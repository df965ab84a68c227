"""One run = one model at one G = one row in the store.

`gqa_sweep.run.train.run` reads as the run's steps, each a function of one job:
build (data, module, run dir), weights (converted starts), trainer (callbacks, Trainer), loggers (csv / wandb),
measure (numbers taken after training), row (the row's columns and the run's summary line).
"""
