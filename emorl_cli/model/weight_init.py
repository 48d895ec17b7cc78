"""Weight initialisation used by the original: Xavier-normal with gain 0.02 and zero biases.

It applies to every `Conv*`/`Linear` inside the given modules (LayerNorms keep PyTorch's defaults).
Which modules get it is part of the model's definition, so each model calls it on the same modules as
the original (see `hvae.py`, `refinement.py`, `slot_attention.py`). The gain is `model.init_gain` (the
paper's 0.02 by default): four such convolutions shrink the image by ~0.02⁴, so at step 0 the slots see only
the position embedding — a long plateau at the start of training that a gain of 1 avoids (README, "The demo").
"""

from __future__ import annotations

from torch import nn

XAVIER_GAIN = 0.02


def xavier_init(*modules: nn.Module, gain: float = XAVIER_GAIN) -> None:
    """Xavier-normal(gain) weights and zero biases for every conv and linear layer in `modules`."""
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.xavier_normal_(layer.weight, gain=gain)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
