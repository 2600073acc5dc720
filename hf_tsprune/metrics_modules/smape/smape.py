"""Symmetric mean absolute percentage error of forecasts, as a fraction in [0, 2].

Packaged with hf_tsprune so that it loads without network:

    import evaluate
    from hf_tsprune.metrics import metric_module_path

    metric = evaluate.load(metric_module_path("smape"))  # or evaluate.load(metric_module_path("smape"),
        "multivariate")
"""

import evaluate

from hf_tsprune.metrics import smape
from hf_tsprune.metrics_modules import as_float64, metric_info

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


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Smape(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, self.config_name, prediction_extra_axes=0)

    def _compute(self, predictions, references, observed_mask=None):
        predictions, references, observed_mask = as_float64(predictions, references, observed_mask)
        return {"smape": smape(predictions, references, observed_mask=observed_mask)}
