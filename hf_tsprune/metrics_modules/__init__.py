"""`evaluate` metric scripts shipped with hf_tsprune, loadable offline.

Load one with `evaluate.load(hf_tsprune.metrics.metric_module_path("mse"))` or `hf_tsprune.metrics.load_metric("mse")`;
each sub-folder holds a script named after it, as `evaluate.load` expects for a local path.
"""
