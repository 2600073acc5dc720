"""The `mase` evaluate module; load it with `evaluate.load(hf_tsprune.metrics.metric_module_path("mase"))`."""
