"""LoRA training: the trainer, the worker's handler for training tasks, and the service that
keeps datasets and queues trainings."""

from huabu.catalog.architectures import Architecture

#: Base architectures the trainer handles (SDXL needs its extra conditioning: not yet).
TRAINABLE = (Architecture.SD1, Architecture.SD2)
