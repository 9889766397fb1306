"""What a search writes to MLflow: the names `search/` logs and `reports/` reads.

One experiment per search. One parent run per search, one child run per trial nested under it
(tag ``mlflow.parentRunId``).

Parent run
  tags:    awdsearch.role = "search", awdsearch.space, awdsearch.model (or "mixed"),
           awdsearch.dataset, awdsearch.git_commit, awdsearch.ray_address, awdsearch.seed,
           awdsearch.storage (Ray's experiment folder)
  params:  the search config (num_samples, max_epochs, scheduler, concurrency, grace_period,
           cpus_per_trial, gpus_per_trial, seed, metric, time_budget_s ...)
  metrics: best_val_ppl, best_test_ppl, trials_total, trials_completed, trials_stopped_early,
           trials_failed, wall_seconds, gpu_hours
  artifacts: config.json (the best trial's full config), checkpoint/best_model.pt (its best
           weights and config)

Child (trial) run, named "<space>-<trial_id>"
  tags:    awdsearch.role = "trial", awdsearch.trial_id, awdsearch.model, awdsearch.dataset,
           awdsearch.status (one of TRIAL_STATUSES), awdsearch.failure (reason, failed only),
           awdsearch.device, awdsearch.node_ip, awdsearch.node_id (Ray node)
  params:  every field of the flat trial config (awd.config.RunConfig.to_flat), plus
           gpus_per_trial
  metrics per epoch (step = epoch): train_loss, train_ppl, val_loss, val_ppl, best_val_ppl, lr,
           epoch_seconds, tokens_per_s, averaging (1.0/0.0)
  metrics once: num_params, ntasgd_trigger_epoch (absent if never triggered), epochs_run,
           train_seconds (sum of epoch_seconds), final_val_ppl, final_test_ppl (completed trials)
  artifacts (best trial only): config.json, checkpoint/best_model.pt
"""

ROLE = "awdsearch.role"
SPACE = "awdsearch.space"
MODEL = "awdsearch.model"
DATASET = "awdsearch.dataset"
GIT_COMMIT = "awdsearch.git_commit"
RAY_ADDRESS = "awdsearch.ray_address"
SEED = "awdsearch.seed"
STORAGE = "awdsearch.storage"
TRIAL_ID = "awdsearch.trial_id"
STATUS = "awdsearch.status"
FAILURE = "awdsearch.failure"
DEVICE = "awdsearch.device"
NODE_IP = "awdsearch.node_ip"
NODE_ID = "awdsearch.node_id"
ABLATION = "awdsearch.ablation"  # names a hand-launched run as an ablation of the best config
PARENT_RUN_ID = "mlflow.parentRunId"

ROLE_SEARCH = "search"
ROLE_TRIAL = "trial"
STATUS_COMPLETED = "completed"
STATUS_STOPPED = "stopped_early"
STATUS_FAILED = "failed"
STATUS_RUNNING = "running"
TRIAL_STATUSES = (STATUS_COMPLETED, STATUS_STOPPED, STATUS_FAILED, STATUS_RUNNING)

EPOCH_METRICS = ("train_loss", "train_ppl", "val_loss", "val_ppl", "best_val_ppl", "lr",
                 "epoch_seconds", "tokens_per_s", "averaging")
TRIAL_SUMMARY_METRICS = ("num_params", "ntasgd_trigger_epoch", "epochs_run", "train_seconds",
                         "final_val_ppl", "final_test_ppl")
SEARCH_SUMMARY_METRICS = ("best_val_ppl", "best_test_ppl", "trials_total", "trials_completed",
                          "trials_stopped_early", "trials_failed", "wall_seconds", "gpu_hours")
