"""One file per model family; importing this package registers them all (`hf_tsprune.register_family`).

| family | model class | needs |
|---|---|---|
| `timesfm` | `TimesFmModelForPrediction` | transformers |
| `timesfm2_5` | `TimesFm2_5ModelForPrediction` | transformers |
| `patchtst` | `PatchTSTForPrediction` | transformers |
| `patchtsmixer` | `PatchTSMixerForPrediction` | transformers |
| `chronos` | `T5ForConditionalGeneration` (chronos-forecasting checkpoints) | `chronos-forecasting` |
| `chronos_bolt` | `ChronosBoltModelForForecasting` | `chronos-forecasting` |
| `ttm` | `TinyTimeMixerForPrediction` | `granite-tsfm` |

A family file imports its optional package only inside the functions that use it, so every family registers (as
unavailable where its package is missing) with the core dependencies alone.
"""

from . import chronos, chronos_bolt, patchtsmixer, patchtst, timesfm, timesfm2_5, ttm  # noqa: F401
