"""Mean absolute scaled error of forecasts (scaled by the in-context seasonal naive error).

Packaged with hf_tsprune so that it loads without network:

    import evaluate
    from hf_tsprune.metrics import metric_module_path

    metric = evaluate.load(metric_module_path("mase"))  # or evaluate.load(metric_module_path("mase"), "multivariate")
"""

import evaluate

from hf_tsprune.metrics import mase
from hf_tsprune.metrics_modules import as_float64, metric_info

_DESCRIPTION = """
Mean absolute scaled error: each window's mean absolute error divided by the mean absolute seasonal
difference of its context (`past_values`, lag `season_length`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: point forecasts, one `(horizon,)` list per window (`(horizon, channels)` with the
        "multivariate" configuration).
    references: targets, one `(horizon,)` list per window (`(horizon, channels)` with "multivariate").
    past_values: contexts, one list per window (`(context,)` or `(context, channels)`).
    season_length (`int`, defaults to 1): seasonal lag of the denominator.
    past_observed_mask: optional observed mask of `past_values`.
    observed_mask: optional 0/1 mask with the references' shape; 0 marks a missing target.
Returns:
    mase: the metric, a float.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Mase(evaluate.Metric):
    def _info(self):
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, self.config_name, prediction_extra_axes=0)

    def _compute(
        self, predictions, references, past_values, season_length=1, observed_mask=None, past_observed_mask=None
    ):
        predictions, references, observed_mask = as_float64(predictions, references, observed_mask)
        past_values, past_observed_mask = as_float64(past_values, past_observed_mask)
        return {
            "mase": mase(
                predictions,
                references,
                past_values=past_values,
                season_length=season_length,
                observed_mask=observed_mask,
                past_observed_mask=past_observed_mask,
            )
        }
