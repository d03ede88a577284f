"""MLflow tracking: the only package that imports mlflow. This face re-exports what the rest of the code uses;
the modules never import it back.

- :mod:`.store` — the store: created whole under a lock, pointed at, its errors as one line;
- :mod:`.pipeline` — a pipeline run: the parent run and one nested run per stage;
- :mod:`.registry` — the model registry: versions, tags, the ``champion`` alias;
- :mod:`.benchmarks` — the benchmarks' runs;
- :mod:`.figures` — the figures the parent run logs.
"""

from pruning.tracking.benchmarks import log_bench, log_report
from pruning.tracking.pipeline import UI_VIEW, PipelineRecord, log_pipeline, reap, spans
from pruning.tracking.registry import Promotion, promote
from pruning.tracking.store import FP32_MODEL_TAG, INT8_MODEL_TAG, flatten, setup, warm_up

__all__ = ["FP32_MODEL_TAG", "INT8_MODEL_TAG", "PipelineRecord", "Promotion", "flatten", "log_bench", "log_pipeline",
           "log_report", "promote", "reap", "setup", "spans", "UI_VIEW", "warm_up"]
