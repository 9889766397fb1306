"""What a search writes to MLflow: the names `search/` logs and `reports/` reads.

One experiment per search. One parent run per search, one child run per trial nested under it
(tag ``mlflow.parentRunId``). A metric keeps its name from `awd.trainer.EpochMetrics` through
Tune's results to MLflow and the report.

Parent run
  tags:    awdsearch.role = "search", awdsearch.space, awdsearch.model (or "mixed"),
           awdsearch.dataset, awdsearch.git_commit, awdsearch.ray_address, awdsearch.seed,
           awdsearch.storage (Ray's experiment folder), awdsearch.study_storage and
           awdsearch.study_name (the Optuna study: `optuna.load_study(study_name=...,
           storage=...)`), awdsearch.warm_start_from (an earlier search's experiment, if any),
           awdsearch.best_trial_id (at the end)
  params:  the search config (num_samples, max_epochs, scheduler, concurrency, grace_period,
           cpus_per_trial, gpus_per_trial, seed, metric, time_budget ...)
  metrics: best_val_ppl, best_test_ppl (the best trial's, chosen by `search.results.pick_best`),
           trials_total, trials_completed, trials_stopped_early, trials_failed, wall_seconds,
           gpu_hours
  artifacts: config.json (the best trial's full config), checkpoint/best_model.pt (its best
           weights, config and vocabulary: `awd.trainer.load_exported` reads it)

Child (trial) run, named "<space>-<trial_id>"
  tags:    awdsearch.role = "trial", awdsearch.trial_id, awdsearch.model, awdsearch.dataset,
           awdsearch.status (one of TRIAL_STATUSES), awdsearch.failure (reason, failed only),
           awdsearch.device, awdsearch.node_ip, awdsearch.node_id (Ray node)
  params:  every field of the flat trial config (awd.config.RunConfig.to_flat), plus
           gpus_per_trial
  metrics per epoch (step = epoch): EPOCH_METRICS
  metrics once: TRIAL_SUMMARY_METRICS: num_params, ntasgd_trigger_epoch (absent if never
           triggered), epochs_run, train_seconds (sum of epoch_seconds), final_val_ppl,
           final_test_ppl (completed trials)
  artifacts (best trial only): config.json, checkpoint/best_model.pt

Confirmation (child) run, named "<space>-confirm-<trial_id>" (``--confirm-top K --seeds S``,
`search.confirm`): a re-training of a search trial's config with another seed, full budget
  tags:    awdsearch.role = "confirm", awdsearch.confirm_of (the re-trained trial's id),
           awdsearch.seed (its training seed, also the ``seed`` param), awdsearch.confirm_rank
           (the original's place in the search's ranking, 1 = best; 0 = unranked),
           awdsearch.confirm_paper ("true" for the paper configuration), and the trial tags
  params, metrics: as a trial run's. Not a trial: the parent's trial counts, best trial and
           gpu_hours leave confirmation runs out; confirm_gpu_hours counts them.
Parent run, with confirmation
  metrics: CONFIRM_SUMMARY_METRICS (mean and sample std over the confirmation runs of the best
           and of the paper configuration, the one-sided Welch p-value, 1/0 verdict)
  tags:    awdsearch.confirm_verdict (the verdict in words)
  artifacts: confirmation.json (every confirmed configuration's numbers)
"""

# --- tags --------------------------------------------------------------------------------
ROLE = "awdsearch.role"
SPACE = "awdsearch.space"
MODEL = "awdsearch.model"
DATASET = "awdsearch.dataset"
GIT_COMMIT = "awdsearch.git_commit"
RAY_ADDRESS = "awdsearch.ray_address"
SEED = "awdsearch.seed"
STORAGE = "awdsearch.storage"
STUDY_STORAGE = "awdsearch.study_storage"
STUDY_NAME = "awdsearch.study_name"
WARM_START_FROM = "awdsearch.warm_start_from"
BEST_TRIAL_ID = "awdsearch.best_trial_id"
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
CONFIRM_OF = "awdsearch.confirm_of"  # a confirmation run: the trial id whose config it re-trains
ROLE_CONFIRM = "confirm"
CONFIRM_RANK = "awdsearch.confirm_rank"  # the original trial's place in the ranking, 1 = best
CONFIRM_PAPER = "awdsearch.confirm_paper"  # "true" on the paper configuration's confirmations
CONFIRM_VERDICT = "awdsearch.confirm_verdict"  # parent run: best vs paper, in words
STATUS_COMPLETED = "completed"
STATUS_STOPPED = "stopped_early"
STATUS_FAILED = "failed"
STATUS_RUNNING = "running"
STATUS_INTERRUPTED = "interrupted"  # running when the driver was stopped; --resume goes on
TRIAL_STATUSES = (STATUS_COMPLETED, STATUS_STOPPED, STATUS_FAILED, STATUS_RUNNING,
                  STATUS_INTERRUPTED)
PARTIAL = "awdsearch.partial"  # "true" on the parent run of a search stopped before its end

# --- metrics: one name per concept --------------------------------------------------------
EPOCH = "epoch"  # epochs done: ASHA's time attribute, the step of every per-epoch metric
VAL_PPL = "val_ppl"  # validation perplexity of this epoch
BEST_VAL_PPL = "best_val_ppl"  # lowest validation perplexity so far: the search's objective
EPOCH_SECONDS = "epoch_seconds"  # one epoch's training + validation time
NTASGD_TRIGGER_EPOCH = "ntasgd_trigger_epoch"  # the epoch NT-ASGD switched to averaging
NUM_PARAMS = "num_params"
EPOCHS_RUN = "epochs_run"
TRAIN_SECONDS = "train_seconds"  # sum of epoch_seconds
FINAL_VAL_PPL = "final_val_ppl"  # validation perplexity of the best weights at the end
FINAL_TEST_PPL = "final_test_ppl"  # test perplexity (batch 1) of the same weights
BEST_TEST_PPL = "best_test_ppl"  # parent run: final_test_ppl of the best trial

EPOCH_METRICS = ("train_loss", "train_ppl", "val_loss", VAL_PPL, BEST_VAL_PPL, "lr",
                 EPOCH_SECONDS, "tokens_per_s", "averaging")
TRIAL_SUMMARY_METRICS = (NUM_PARAMS, NTASGD_TRIGGER_EPOCH, EPOCHS_RUN, TRAIN_SECONDS,
                         FINAL_VAL_PPL, FINAL_TEST_PPL)
SEARCH_SUMMARY_METRICS = (BEST_VAL_PPL, BEST_TEST_PPL, "trials_total", "trials_completed",
                          "trials_stopped_early", "trials_failed", "trials_interrupted",
                          "wall_seconds", "gpu_hours")

# parent run, with --confirm-top: over the confirmation runs (the original trials left out)
CONFIRM_RUNS = "confirm_runs"  # confirmation runs started
CONFIRM_COMPLETED = "confirm_runs_completed"
CONFIRM_GPU_HOURS = "confirm_gpu_hours"  # their cost, not part of gpu_hours
CONFIRM_BEST_VAL_MEAN = "confirm_best_val_ppl_mean"  # the search's best configuration
CONFIRM_BEST_VAL_STD = "confirm_best_val_ppl_std"
CONFIRM_BEST_TEST_MEAN = "confirm_best_test_ppl_mean"
CONFIRM_BEST_TEST_STD = "confirm_best_test_ppl_std"
CONFIRM_PAPER_VAL_MEAN = "confirm_paper_val_ppl_mean"  # the paper configuration
CONFIRM_PAPER_VAL_STD = "confirm_paper_val_ppl_std"
CONFIRM_PAPER_TEST_MEAN = "confirm_paper_test_ppl_mean"
CONFIRM_PAPER_TEST_STD = "confirm_paper_test_ppl_std"
CONFIRM_P_VALUE = "confirm_p_value"  # one-sided Welch's t-test: best's val < paper's val
CONFIRM_BETTER = "confirm_best_beats_paper"  # 1: beyond seed noise, 0: not shown (absent: n/a)
CONFIRM_SUMMARY_METRICS = (CONFIRM_RUNS, CONFIRM_COMPLETED, CONFIRM_GPU_HOURS,
                           CONFIRM_BEST_VAL_MEAN, CONFIRM_BEST_VAL_STD, CONFIRM_BEST_TEST_MEAN,
                           CONFIRM_BEST_TEST_STD, CONFIRM_PAPER_VAL_MEAN, CONFIRM_PAPER_VAL_STD,
                           CONFIRM_PAPER_TEST_MEAN, CONFIRM_PAPER_TEST_STD, CONFIRM_P_VALUE,
                           CONFIRM_BETTER)

# --- the Optuna study ------------------------------------------------------------------------
OPTUNA_TUNE_TRIAL_ID = "tune_trial_id"  # user attr of each study trial: the Tune (= MLflow) id

# --- keys of a trial's Tune result that are not metrics ------------------------------------
FINISHED = "finished"  # 1 on the last result of a trial that ran its whole budget
DIVERGED = "diverged"  # 1 on the result of a trial whose loss became NaN or infinite
FATAL = "fatal_error"  # the reason, on the last result of a trial that cannot succeed on retry
