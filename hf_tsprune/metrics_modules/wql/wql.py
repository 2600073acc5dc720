"""Mean weighted quantile loss of quantile forecasts (the GluonTS/Chronos definition).

Packaged with hf_tsprune so that it loads without network:

    import evaluate
    from hf_tsprune.metrics import metric_module_path

    metric = evaluate.load(metric_module_path("wql"))  # or evaluate.load(metric_module_path("wql"), "multivariate")
"""

import evaluate

from hf_tsprune.metrics import weighted_quantile_loss
from hf_tsprune.metrics_modules import as_float64, metric_info

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


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Wql(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, self.config_name, prediction_extra_axes=1)

    def _compute(self, predictions, references, quantile_levels, observed_mask=None):
        predictions, references, observed_mask = as_float64(predictions, references, observed_mask)
        return {
            "wql": weighted_quantile_loss(
                predictions, references, quantile_levels=quantile_levels, observed_mask=observed_mask
            )
        }
