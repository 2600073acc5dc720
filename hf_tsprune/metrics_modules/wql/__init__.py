"""The `wql` evaluate module; load it with `evaluate.load(hf_tsprune.metrics.metric_module_path("wql"))`."""
