"""Apache Beam pipelines: generate -> teacher -> score -> judge -> publish.

Each stage is a module with PTransforms and a ``python -m pipelines.<stage>`` entry point;
see docs/pipelines.md.
"""

import os

# Before TensorFlow is imported (Beam imports it): its C++ INFO lines are noise here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GLOG_minloglevel", "2")
