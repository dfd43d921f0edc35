"""LoRA training: the service that keeps datasets and queues trainings, and the trainer a
worker runs (``worker.handle_training`` is its task handler)."""

from huabu.catalog.architectures import Architecture

#: Base architectures the trainer handles (SDXL needs its extra conditioning: not yet).
TRAINABLE = (Architecture.SD1, Architecture.SD2)
