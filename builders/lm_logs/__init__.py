"""Recorder Riegeli logs (envlogger layout) published as a TFDS dataset with Apache Beam."""
