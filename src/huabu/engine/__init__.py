"""The engine layer: checkpoints, samplers, prompts and diffusers pipelines. Only workers and
the CLI import it; the API process never touches torch."""

import logging
import os

# transformers announces at import time that torchvision is absent (huabu never installs it:
# STACK.md); torchao, imported by transformers' and diffusers' quantizers, that its CUDA
# kernels do not load on a CPU, and that torch will soon object to how it registers its enums.
# Only errors are worth a user's attention.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)


def quiet_libraries() -> None:
    """diffusers/transformers progress bars and advice would interleave with huabu's own."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # torchsde warns when a float32 sigma rounds a hair below its interval start; harmless.
    warnings.filterwarnings("ignore", message="Should have ta>=t0", module="torchsde")
    # peft on a torchao-quantized layer: merging would fail; huabu never merges LoRAs there.
    warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated")
    for module in (diffusers_logging, transformers_logging):
        module.set_verbosity_error()
        module.disable_progress_bar()
