"""What a search writes to MLflow: the names `search/` logs and `reports/` reads.

One experiment per search. One parent run per search, one child run per trial nested under it
(tag ``mlflow.parentRunId``). A metric keeps its name from `awd.trainer.EpochMetrics` through
Tune's results to MLflow and the report.

Experiment
  tags:    MLflow's experiment kind (EXPERIMENT_KIND_ML, not GenAI), primary metric
           (best_val_ppl, lower is better) and a saved runs-table view (RUNS_VIEW: the objective,
           summary and searched-param columns, the trials nested under the parent run, the
           objective's charts first): `search.tracking.conventions`; its `experiment_url` opens
           them, its `run_page_url` a run's page (both in MLflow's Model training mode)

Parent run
  tags:    MLflow's mlflow.source.name (SOURCE_NAME), .type, .git.commit and mlflow.user;
           awdsearch.role = "search", awdsearch.space, awdsearch.model (or "mixed"),
           awdsearch.dataset, awdsearch.git_commit, awdsearch.ray_address, awdsearch.seed,
           awdsearch.storage (Ray's experiment folder), awdsearch.study_storage and
           awdsearch.study_name (the Optuna study: `optuna.load_study(study_name=...,
           storage=...)`), awdsearch.warm_start_from (an earlier search's experiment, if any),
           awdsearch.best_trial_id (at the end)
  params:  the search config (num_samples, max_epochs, scheduler, concurrency, grace_period,
           cpus_per_trial, gpus_per_trial, seed, time_budget ...); ``metric`` names the
           objective (best_val_ppl, minimised)
  inputs:  the space's dataset, as on the trial runs
  metrics: best_val_ppl, best_test_ppl (the best trial's, chosen by `search.results.pick_best`),
           trials_total, trials_completed, trials_stopped_early, trials_failed, wall_seconds,
           gpu_hours
  artifacts: config.json (the best trial's full config: ``python -m awd.train --config``)
  tags:    awdsearch.model_uri (the best model: its version in the Model Registry, see below)

Child (trial) run, named "<space>-<trial_id>"
  tags:    awdsearch.role = "trial", awdsearch.trial_id, awdsearch.model, awdsearch.dataset,
           awdsearch.status (one of TRIAL_STATUSES), awdsearch.failure (reason, failed only),
           awdsearch.device, awdsearch.node_ip, awdsearch.node_id (the Ray node of the latest
           epoch it logged: a trial that lost its node and resumed on another names the new one)
  tags:    also MLflow's source tags, copied from the parent run
  params:  every field of the full flat trial config with its effective value
           (``from_flat(config).to_flat()``, not only the searched keys), plus gpus_per_trial
  inputs:  the dataset (MLflow dataset tracking: name, digest from the registry's sha256s,
           source URL or folder, context "training"); the parent run's too
  metrics per epoch (step = epoch): EPOCH_METRICS (MLflow names: Tune's ``lr`` is logged as
           EPOCH_LR, the ``lr`` param being the initial rate; see TUNE_KEYS), and the trial's
           own SYSTEM_METRICS measurements, and SYSTEM_GPU_* on CUDA (``system/...``: MLflow's
           "System metrics" tab)
  metrics once: TRIAL_SUMMARY_METRICS: num_params, ntasgd_trigger_epoch (absent if never
           triggered), epochs_run, train_seconds (sum of epoch_seconds), final_val_ppl,
           final_test_ppl (completed trials), and its cost (COST_METRICS): train_tokens_per_s,
           seconds_per_epoch, peak_memory_mb; the device is the awdsearch.device tag
  artifacts (best trial only): config.json, and the MLflow model "model" (below)

The best model (`search.tracking.registry`), stored once: an MLflow PyTorch model named
"model" logged on the best trial's run (``runs:/<its run id>/model``) holding the exported file
extra_files/best_model.pt (weights, config, vocabulary; `awd.trainer.load_exported` reads it
with weights_only, ``python -m search.evaluate`` evaluates it), registered as one new version per
search of ``awdsearch-<space>``; version tags: awdsearch.val_ppl, awdsearch.test_ppl (the best
trial's final perplexities, as the parent's best_val_ppl / best_test_ppl),
awdsearch.parent_run_id, awdsearch.trial_id, awdsearch.model, awdsearch.dataset,
awdsearch.space, awdsearch.experiment. The parent's and the best trial's awdsearch.model_uri
tag names the version (``models:/awdsearch-<space>/<version>``).

Confirmation (child) run, named "<space>-confirm-<trial_id>" (``--confirm-top K --seeds S``,
`search.stages.confirm`): a re-training of a search trial's config with another seed, full budget
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

Ablation (child) run, named "ablate_<row>_s<seed>_<id>" in Tune (``--ablate``,
`search.stages.ablate`): the winner re-trained with one of Table 4's techniques removed
  tags:    awdsearch.role = "ablation", awdsearch.ablation (the row, `awd.ablation.ROWS`; "full"
           for the winner unchanged when no confirmation gives it), awdsearch.ablation_of (the
           winner's trial id), awdsearch.seed, and the trial tags
  params, metrics: as a trial run's. Not a trial: ablation_gpu_hours counts them.
Parent run, with the ablation
  metrics: ABLATION_SUMMARY_METRICS
  artifacts: ablation.json (every row's numbers, its change and p-value against the winner)

Cache (child) run, named "<space>-cache" (``--cache-trials N``, `search.stages.cache`): the
continuous cache tuned on the winner, on validation only
  tags:    awdsearch.role = "cache", awdsearch.cache (the chosen "W,θ,λ")
  metrics: trial_window, trial_theta, trial_lambda, trial_val_ppl (step = the trial's place
           among the study's finished trials, 0 = the paper's values); once: cache_window,
           cache_theta, cache_lambda (chosen), trials, val_ppl and test_ppl (the model alone,
           sequential at batch 1), cache_val_ppl, cache_test_ppl (test evaluated once),
           outputs_seconds, seconds_per_trial, cached_test_seconds
Ensemble (child) run, named "<space>-ensemble" (``--ensemble K``, `search.stages.ensemble`):
greedy ensemble selection with replacement over the completed trials and re-trainings
  tags:    awdsearch.role = "ensemble", awdsearch.ensemble_members (JSON: name, trial id, weight),
           awdsearch.ensemble_size (K asked for), awdsearch.ensemble_best_single (the best
           single candidate), awdsearch.cache (the ensemble's own cache, where it helped on
           validation), awdsearch.model_uri (its registered version)
  metrics: selection_val_ppl (step = selection step), members, candidates, val_ppl, test_ppl,
           cache_val_ppl, cache_test_ppl (with its cache), best_single_val_ppl,
           best_single_test_ppl, seconds
  model:   the ensemble's file (`awd.ensemble`), registered as a version of
           ``awdsearch-<space>-ensemble``
Parent run, with either: metrics cache_val_ppl, cache_test_ppl, ensemble_val_ppl,
           ensemble_test_ppl, ensemble_cache_val_ppl, ensemble_cache_test_ppl; tag
           awdsearch.cache; the registered version of the winner: tag awdsearch.cache
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
ABLATION = "awdsearch.ablation"  # an ablation run's row (`awd.ablation.ROWS`; "full": none removed)
ABLATION_OF = "awdsearch.ablation_of"  # an ablation run: the winner's trial id
PARENT_RUN_ID = "mlflow.parentRunId"

PARETO = "awdsearch.pareto"  # a trial run of a multi-objective search: "true" on the front
PARETO_TRIALS = "awdsearch.pareto_trials"  # its parent: the front's trial ids, JSON
ROLE_SEARCH = "search"
ROLE_TRIAL = "trial"
CONFIRM_OF = "awdsearch.confirm_of"  # a confirmation run: the trial id whose config it re-trains
ROLE_CONFIRM = "confirm"
CONFIRM_RANK = "awdsearch.confirm_rank"  # the original trial's place in the ranking, 1 = best
CONFIRM_PAPER = "awdsearch.confirm_paper"  # "true" on the paper configuration's confirmations
CONFIRM_VERDICT = "awdsearch.confirm_verdict"  # parent run: best vs paper, in words
ROLE_ABLATION = "ablation"  # the winner re-trained with one technique removed (`--ablate`)
ROLE_CACHE = "cache"  # the continuous cache tuned on the winner (`search.stages.cache`)
ROLE_ENSEMBLE = "ensemble"  # greedy ensemble selection (`search.stages.ensemble`)
CACHE_VALUES = "awdsearch.cache"  # "W,theta,lambda" chosen on validation: `--cache tuned`
ENSEMBLE_MEMBERS = "awdsearch.ensemble_members"  # JSON list: name, trial id, weight
ENSEMBLE_SIZE = "awdsearch.ensemble_size"  # the --ensemble K the stage ran with
ENSEMBLE_BEST_SINGLE = "awdsearch.ensemble_best_single"  # the best single candidate's name
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
TRAIN_PPL = "train_ppl"  # training perplexity of this epoch (dropout on)
BEST_VAL_PPL = "best_val_ppl"  # lowest validation perplexity so far: the search's objective
EPOCH_SECONDS = "epoch_seconds"  # one epoch's training + validation time
NTASGD_TRIGGER_EPOCH = "ntasgd_trigger_epoch"  # the epoch NT-ASGD switched to averaging
NUM_PARAMS = "num_params"
EPOCHS_RUN = "epochs_run"
TRAIN_SECONDS = "train_seconds"  # sum of epoch_seconds
FINAL_VAL_PPL = "final_val_ppl"  # validation perplexity of the best weights at the end
FINAL_TEST_PPL = "final_test_ppl"  # test perplexity (batch 1) of the same weights
BEST_TEST_PPL = "best_test_ppl"  # parent run: final_test_ppl of the best trial

EPOCH_METRICS = ("train_loss", TRAIN_PPL, "val_loss", VAL_PPL, BEST_VAL_PPL, "epoch_lr",
                 EPOCH_SECONDS, "tokens_per_s", "averaging")
# What a trial costs (issue 18): with NUM_PARAMS and TRAIN_SECONDS, the report's cost section.
TRAIN_TOKENS_PER_S = "train_tokens_per_s"  # mean over its epochs of tokens_per_s
SECONDS_PER_EPOCH = "seconds_per_epoch"  # train_seconds / epochs_run
PEAK_MEMORY_MB = "peak_memory_mb"  # CUDA allocator's peak on a GPU, process VmHWM on CPU
COST_METRICS = (NUM_PARAMS, TRAIN_TOKENS_PER_S, SECONDS_PER_EPOCH, PEAK_MEMORY_MB, TRAIN_SECONDS)
TRIAL_SUMMARY_METRICS = (NUM_PARAMS, NTASGD_TRIGGER_EPOCH, EPOCHS_RUN, TRAIN_SECONDS,
                         FINAL_VAL_PPL, FINAL_TEST_PPL, TRAIN_TOKENS_PER_S, SECONDS_PER_EPOCH,
                         PEAK_MEMORY_MB)
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
ABLATION_RUNS = "ablation_runs"  # ablation runs started
ABLATION_COMPLETED = "ablation_runs_completed"
ABLATION_GPU_HOURS = "ablation_gpu_hours"  # their cost, apart from gpu_hours and confirm's
ABLATION_SUMMARY_METRICS = (ABLATION_RUNS, ABLATION_COMPLETED, ABLATION_GPU_HOURS)
CONFIRM_SUMMARY_METRICS = (CONFIRM_RUNS, CONFIRM_COMPLETED, CONFIRM_GPU_HOURS,
                           CONFIRM_BEST_VAL_MEAN, CONFIRM_BEST_VAL_STD, CONFIRM_BEST_TEST_MEAN,
                           CONFIRM_BEST_TEST_STD, CONFIRM_PAPER_VAL_MEAN, CONFIRM_PAPER_VAL_STD,
                           CONFIRM_PAPER_TEST_MEAN, CONFIRM_PAPER_TEST_STD, CONFIRM_P_VALUE,
                           CONFIRM_BETTER)

# parent run, with --cache-trials / --ensemble (the stages' child runs have the same names)
CACHE_VAL_PPL = "cache_val_ppl"
CACHE_TEST_PPL = "cache_test_ppl"
ENSEMBLE_VAL_PPL = "ensemble_val_ppl"
ENSEMBLE_TEST_PPL = "ensemble_test_ppl"
ENSEMBLE_CACHE_VAL_PPL = "ensemble_cache_val_ppl"
ENSEMBLE_CACHE_TEST_PPL = "ensemble_cache_test_ppl"
ENSEMBLE_MODEL_SUFFIX = "-ensemble"  # the ensembles' registered model: awdsearch-<space>-ensemble

# --- the Optuna study ------------------------------------------------------------------------
OPTUNA_TUNE_TRIAL_ID = "tune_trial_id"  # user attr of each study trial: the Tune (= MLflow) id

# --- keys of a trial's Tune result that are not metrics ------------------------------------
FINISHED = "finished"  # 1 on the last result of a trial that ran its whole budget
DIVERGED = "diverged"  # 1 on the result of a trial whose loss became NaN or infinite
FATAL = "fatal_error"  # the reason, on the last result of a trial that cannot succeed on retry

# --- model registry --------------------------------------------------------------------------
REGISTERED_MODEL_PREFIX = "awdsearch-"  # one registered model per space: awdsearch-<space>
LOGGED_MODEL_NAME = "model"  # the MLflow model on the best trial's run: runs:/<run id>/model
MODEL_URI = "awdsearch.model_uri"  # parent and best trial runs: the registered version's URI
MODEL_VAL_PPL = "awdsearch.val_ppl"  # version tags: the best trial's final_val_ppl ...
MODEL_TEST_PPL = "awdsearch.test_ppl"  # ... and final_test_ppl (absent if it did not finish)
MODEL_PARENT_RUN_ID = "awdsearch.parent_run_id"  # the search's parent run
EXPERIMENT = "awdsearch.experiment"  # the search's MLflow experiment name

# --- MLflow conventions ----------------------------------------------------------------------
# Names MLflow itself gives meaning to (its UI's columns and tabs), and how ours map onto them.
EPOCH_LR = "epoch_lr"  # the learning rate during each epoch; the ``lr`` param is the initial one
TUNE_KEYS = {EPOCH_LR: "lr"}  # MLflow metric -> its Tune result key, where the two differ
SYSTEM_PREFIX = "system/"  # MLflow's "System metrics" tab shows the metrics under this prefix
# Measured by the trial itself each epoch (MLflow's monitor runs in the process that logs, which
# for us is the driver); the names are MLflow's (mlflow/system_metrics/metrics/*.py) except the
# process's own RSS. CPU: the trial process's share of the node's CPUs, in % (0-100).
SYSTEM_CPU = "system/cpu_utilization_percentage"
SYSTEM_MEMORY_MB = "system/system_memory_usage_megabytes"  # the node's used memory
SYSTEM_MEMORY_PCT = "system/system_memory_usage_percentage"
SYSTEM_PROCESS_RSS_MB = "system/process_memory_rss_megabytes"  # the trial process's RSS
SYSTEM_GPU_MEMORY_MB = "system/gpu_{index}_memory_usage_megabytes"  # the trial's peak allocated
SYSTEM_GPU_UTILIZATION = "system/gpu_{index}_utilization_percentage"  # NVML, where available
SYSTEM_METRICS = (SYSTEM_CPU, SYSTEM_MEMORY_MB, SYSTEM_MEMORY_PCT, SYSTEM_PROCESS_RSS_MB)  # + GPU
SOURCE_NAME = "python -m search.run"  # mlflow.source.name of every run a search writes
DATASET_CONTEXT = "training"  # mlflow.data.context of the runs' dataset input
EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3 UI: no "GenAI or ML?" prompt
EXPERIMENT_KIND_ML = "custom_model_development"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local (SQLite) store by default
WORKFLOW_TYPE_ML = "machine_learning"  # the 3.x UI's ?workflowType= (its sidebar toggle)
RUNS_VIEW = "awdsearch"  # id of the saved runs-table view (experiment tag mlflow.sharedViewState.*)
RUNS_VIEW_METRICS = (BEST_VAL_PPL, FINAL_VAL_PPL, FINAL_TEST_PPL, EPOCHS_RUN)
RUNS_VIEW_TAGS = (MODEL, STATUS)  # the view's columns: these metrics, the searched params, tags
RUNS_VIEW_CHARTS = (BEST_VAL_PPL, VAL_PPL)  # the view's first charts: a bar per run, by epoch
