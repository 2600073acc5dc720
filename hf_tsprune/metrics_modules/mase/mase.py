"""Mean absolute scaled error of forecasts (scaled by the in-context seasonal naive error).

Packaged with hf_tsprune so that it loads without network:

    import evaluate
    from hf_tsprune.metrics import metric_module_path

    metric = evaluate.load(metric_module_path("mase"))  # or evaluate.load(metric_module_path("mase"), "multivariate")
"""

import datasets
import evaluate
import numpy as np

from hf_tsprune.metrics import mase

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

_CITATION = """@article{lessismore2025,
  title={Less is More: Unlocking Specialization of Time Series Foundation Models via Structured Pruning},
  journal={arXiv preprint arXiv:2505.23195},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Mase(evaluate.Metric):
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

    def _compute(
        self, predictions, references, past_values, season_length=1, observed_mask=None, past_observed_mask=None
    ):
        predictions = np.asarray(predictions, dtype=np.float64)
        references = np.asarray(references, dtype=np.float64)
        if observed_mask is not None:
            observed_mask = np.asarray(observed_mask, dtype=np.float64)
        past_values = np.asarray(past_values, dtype=np.float64)
        if past_observed_mask is not None:
            past_observed_mask = np.asarray(past_observed_mask, dtype=np.float64)
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
