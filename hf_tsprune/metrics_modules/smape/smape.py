"""Symmetric mean absolute percentage error of forecasts, as a fraction in [0, 2].

Packaged with hf_tsprune so that it loads without network:

    import evaluate
    from hf_tsprune.metrics import metric_module_path

    metric = evaluate.load(metric_module_path("smape"))  # or evaluate.load(metric_module_path("smape"),
        "multivariate")
"""

import datasets
import evaluate
import numpy as np

from hf_tsprune.metrics import smape

_DESCRIPTION = """
Symmetric mean absolute percentage error, mean of 2|y - y_hat| / (|y| + |y_hat|), a fraction in [0,
2].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: point forecasts, one `(horizon,)` list per window (`(horizon, channels)` with the
        "multivariate" configuration).
    references: targets, one `(horizon,)` list per window (`(horizon, channels)` with "multivariate").
    observed_mask: optional 0/1 mask with the references' shape; 0 marks a missing target.
Returns:
    smape: the metric, a float.
"""

_CITATION = """@article{lessismore2025,
  title={Less is More: Unlocking Specialization of Time Series Foundation Models via Structured Pruning},
  journal={arXiv preprint arXiv:2505.23195},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Smape(evaluate.Metric):
    def _info(self):
        if self.config_name == "multivariate":
            features = datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
                }
            )
        else:
            features = datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
        )

    def _compute(self, predictions, references, observed_mask=None):
        predictions = np.asarray(predictions, dtype=np.float64)
        references = np.asarray(references, dtype=np.float64)
        if observed_mask is not None:
            observed_mask = np.asarray(observed_mask, dtype=np.float64)
        return {"smape": smape(predictions, references, observed_mask=observed_mask)}
