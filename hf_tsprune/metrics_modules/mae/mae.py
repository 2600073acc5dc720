"""Mean absolute error of forecasts (the LTSF protocol reports it on standard-scaled values).

Packaged with hf_tsprune so that it loads without network:

    import evaluate
    from hf_tsprune.metrics import metric_module_path

    metric = evaluate.load(metric_module_path("mae"))  # or evaluate.load(metric_module_path("mae"), "multivariate")
"""

import evaluate

from hf_tsprune.metrics import mae
from hf_tsprune.metrics_modules import as_float64, metric_info

_DESCRIPTION = """
Mean absolute error of forecasts over observed values (the LTSF protocol reports it on standard-scaled
values).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: point forecasts, one `(horizon,)` list per window (`(horizon, channels)` with the
        "multivariate" configuration).
    references: targets, one `(horizon,)` list per window (`(horizon, channels)` with "multivariate").
    observed_mask: optional 0/1 mask with the references' shape; 0 marks a missing target.
Returns:
    mae: the metric, a float.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Mae(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, self.config_name, prediction_extra_axes=0)

    def _compute(self, predictions, references, observed_mask=None):
        predictions, references, observed_mask = as_float64(predictions, references, observed_mask)
        return {"mae": mae(predictions, references, observed_mask=observed_mask)}
