"""Mean weighted quantile loss of quantile forecasts (the GluonTS/Chronos definition).

Packaged with hf_tsprune so that it loads without network:

    import evaluate
    from hf_tsprune.metrics import metric_module_path

    metric = evaluate.load(metric_module_path("wql"))  # or evaluate.load(metric_module_path("wql"), "multivariate")
"""

import datasets
import evaluate
import numpy as np

from hf_tsprune.metrics import weighted_quantile_loss

_DESCRIPTION = """
Mean weighted quantile loss of quantile forecasts (GluonTS/Chronos definition): mean over levels q
of 2 sum|(y - y_hat_q)((y <= y_hat_q) - q)| / sum|y|.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: quantile forecasts, one `(horizon, num_quantiles)` list per window (`(horizon, channels,
        num_quantiles)` with the "multivariate" configuration).
    references: targets, one `(horizon,)` list per window (`(horizon, channels)` with "multivariate").
    quantile_levels (`list[float]`): the levels of the last axis of `predictions`.
    observed_mask: optional 0/1 mask with the references' shape; 0 marks a missing target.
Returns:
    wql: the metric, a float.
"""

_CITATION = """@article{lessismore2025,
  title={Less is More: Unlocking Specialization of Time Series Foundation Models via Structured Pruning},
  journal={arXiv preprint arXiv:2505.23195},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Wql(evaluate.Metric):
    def _info(self):
        if self.config_name == "multivariate":
            features = datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float64")))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
                }
            )
        else:
            features = datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
        )

    def _compute(self, predictions, references, quantile_levels, observed_mask=None):
        predictions = np.asarray(predictions, dtype=np.float64)
        references = np.asarray(references, dtype=np.float64)
        if observed_mask is not None:
            observed_mask = np.asarray(observed_mask, dtype=np.float64)
        return {
            "wql": weighted_quantile_loss(
                predictions, references, quantile_levels=quantile_levels, observed_mask=observed_mask
            )
        }
