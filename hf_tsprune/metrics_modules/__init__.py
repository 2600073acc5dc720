"""`evaluate` metric scripts shipped with hf_tsprune, loadable offline.

Load one with `evaluate.load(hf_tsprune.metrics.metric_module_path("mse"))` or `hf_tsprune.metrics.load_metric("mse")`;
each sub-folder holds a script named after it, as `evaluate.load` expects for a local path. The scripts share the
helpers below: input features per configuration (`"default"`: one univariate window per row, `"multivariate"`: one
`(horizon, channels)` window per row), the metric info, and float64 conversion.
"""

import datasets
import evaluate
import numpy as np

CITATION = """@inproceedings{zhao2025less,
  title={Less is More: Unlocking Specialization of Time Series Foundation Models via Structured Pruning},
  author={Zhao, Lifan and Shen, Yanyan and Liu, Zhaoyang and Wang, Xue and Deng, Jiaji},
  booktitle={Advances in Neural Information Processing Systems 38 (NeurIPS 2025)},
  year={2025}
}
"""


def _nested(depth: int) -> datasets.Sequence:
    feature = datasets.Value("float64")
    for _ in range(depth):
        feature = datasets.Sequence(feature)
    return feature


def metric_info(
    description: str, inputs_description: str, config_name: str, prediction_extra_axes: int = 0
) -> evaluate.MetricInfo:
    """`MetricInfo` of a forecast metric: references `(horizon[, channels])` per row, predictions with
    `prediction_extra_axes` more trailing axes (1 for quantile forecasts)."""
    depth = 2 if config_name == "multivariate" else 1
    features = datasets.Features({"predictions": _nested(depth + prediction_extra_axes), "references": _nested(depth)})
    return evaluate.MetricInfo(
        description=description, citation=CITATION, inputs_description=inputs_description, features=features
    )


def as_float64(*values):
    """Each value as a float64 array (`None` stays `None`)."""
    return tuple(None if v is None else np.asarray(v, dtype=np.float64) for v in values)
