"""Linear layers for a model in float32 on a CPU, computed weight first.

A linear layer computes ``x @ weight.T``: a few rows (a decode step's batch, or a prompt's
positions) against a weight matrix thousands wide. PyTorch hands that to MKL's GEMM with
the weight as the second operand, which MKL repacks on every call; asked for the same
product the other way round, ``(weight @ x.T).T``, MKL streams the weight as it lies and
packs only the few rows. The results are the same to float32's rounding (neither way is
bit-exact across batch sizes), and on an AVX2 CPU the 48 layers and the output layer of
GPT-2 124M's shape take a third less time at 4 to 128 rows (as long at one row).

:func:`use_weight_first_linear` swaps a model's plain linear layers (``nn.Linear`` and
GPT-2's transposed ``Conv1D``) for :class:`WeightFirstLinear`, which keeps their
parameters (a tied output layer stays tied) and returns the same contiguous output.
"""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D


class WeightFirstLinear(nn.Linear):
    """``nn.Linear`` computed as ``(weight @ x.T).T``: same parameters, same output."""

    @classmethod
    def of(cls, layer: nn.Linear | Conv1D) -> "WeightFirstLinear":
        """The layer's parameters in a :class:`WeightFirstLinear`: an ``nn.Linear``'s own
        (shared with whatever else holds them); a ``Conv1D``'s weight transposed (in, out
        becomes out, in) into a new parameter, the old one left to be freed."""
        weight = (
            nn.Parameter(layer.weight.detach().t().contiguous())
            if isinstance(layer, Conv1D)
            else layer.weight
        )
        out_features, in_features = weight.shape
        swapped = cls(in_features, out_features, bias=layer.bias is not None, device="meta")
        swapped.weight = weight
        swapped.bias = layer.bias
        return swapped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).t()
        if self.bias is None:
            product = torch.mm(self.weight, rows)
        else:
            product = torch.addmm(self.bias[:, None], self.weight, rows)
        return product.t().contiguous().view(*x.shape[:-1], self.out_features)


def use_weight_first_linear(model: PreTrainedModel) -> int:
    """Swaps ``model``'s plain linear layers for :class:`WeightFirstLinear` when it is in
    float32 on a CPU (where it was measured to pay); returns how many were swapped.
    Subclasses of ``nn.Linear`` (quantized layers, LoRA) keep their own forward."""
    if model.device.type != "cpu" or model.dtype != torch.float32:
        return 0
    plain = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | Conv1D)
        and type(module) in (nn.Linear, Conv1D)
        and module.weight.dtype == torch.float32
    }
    for name, module in plain.items():
        model.set_submodule(name, WeightFirstLinear.of(module))
    return len(plain)
