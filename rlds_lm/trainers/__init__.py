"""Trainers that replay published RLDS datasets: losses, input pipeline, trainers.

Nothing here imports TensorFlow (GPU / TPU hosts run it with JAX alone).
"""
