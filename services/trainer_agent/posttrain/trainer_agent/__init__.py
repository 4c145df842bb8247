"""posttrain trainer agent: runs pipeline stages with torch on GPU nodes and reports metrics.

The reporting entry points of SEED.md section 2 import without torch::

    from posttrain.trainer_agent import create_training_callback, create_metrics_file_writer
"""

from posttrain.trainer_agent.metrics_file import create_metrics_file_writer
from posttrain.trainer_agent.reporting import create_training_callback

__all__ = ["create_metrics_file_writer", "create_training_callback"]
