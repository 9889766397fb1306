"""MLflow's side of a search: the store and the parent run (`store`), each trial's records
(`records`, written through the durable `outbox`), repair from Ray's results (`backfill`),
MLflow's UI conventions (`conventions`), the best model in the registry (`registry`) and
configurations carried from an earlier search (`transfer`). Ray-free."""
