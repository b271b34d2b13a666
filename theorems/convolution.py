"""A small convolutional network in the suite's factor form (full App. G.6's VGG experiments, issue #16's stand-in).

The spectral core takes square factors ``W diag(d)``.  A CNN fits it when every layer maps the same space to itself:
``channels`` feature maps of ``height x width`` pixels, 3x3 (any odd size) kernels with stride 1 and *circular*
padding (the image is a torus, so every output pixel sees a full window and every input pixel feeds the same number
of outputs), no pooling (VGG's pooling halves the maps: rectangular factors, which the core does not take).  Then
layer l is one dense ``N x N`` matrix, ``N = channels * height * width``, and the Jacobian of
``Y_l = conv_l(relu(Y_{l-1}))`` at an input is ``J = W_L D_{L-1} ... D_1 W_1`` with ``D = diag(1{Y > 0})``: the
:class:`theorems.ensembles.Factor` list the core multiplies, renormalises and decomposes.

He initialisation ``N(0, σ²/(channels k²))`` keeps the mean-square gain of a layer at exactly σ² (each output sees
``channels k²`` inputs, each input feeds ``k²`` outputs per channel), so σ² = 2 is critical for the ReLU CNN as for
the MLP; the layer is not an iid Gaussian matrix (weights are shared across pixels), so the MLP's closed forms for
the exponents do not carry over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .ensembles import Factor
from .validation import check_int, check_real

__all__ = ["sample_conv_kernels", "circular_conv", "circular_conv_matrix", "cnn_forward", "cnn_factors"]


def sample_conv_kernels(batch: int, channels: int, size: int, sigma2: float, generator: torch.Generator, *,
                        device=None, dtype=torch.float64) -> torch.Tensor:
    """B networks' kernels of one layer, (B, channels, channels, size, size), iid ``N(0, σ²/(channels size²))``."""
    batch, channels = check_int("batch", batch), check_int("channels", channels)
    size = check_int("size", size)
    if size % 2 == 0:
        raise ValueError(f"size must be an odd integer >= 1 (a centred window); got {size}")
    sigma2 = check_real("sigma2", sigma2, low=0.0, low_open=True)
    std = (sigma2 / (channels * size * size)) ** 0.5
    return std * torch.randn(batch, channels, channels, size, size, generator=generator, device=device, dtype=dtype)


def circular_conv(kernels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Each network's stride-1 circular convolution: kernels (B, c, c, k, k), x (B, M, c, h, w) -> (B, M, c, h, w)
    (M inputs per network; one grouped ``conv2d``)."""
    b, m, c, h, w = x.shape
    pad = kernels.shape[-1] // 2
    flat = x.transpose(0, 1).reshape(m, b * c, h, w)
    wrapped = F.pad(flat, (pad, pad, pad, pad), mode="circular") if pad else flat
    out = F.conv2d(wrapped, kernels.reshape(b * c, c, *kernels.shape[-2:]), groups=b)
    return out.reshape(m, b, c, h, w).transpose(0, 1)


def circular_conv_matrix(kernels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The dense matrix (B, N, N), ``N = c h w`` (index (channel, row, column), row-major as ``reshape``), of each
    network's circular convolution: ``matrix @ x.reshape(N) == circular_conv(kernels, x).reshape(N)``."""
    b, c = kernels.shape[0], kernels.shape[1]
    n = c * height * width
    basis = torch.eye(n, dtype=kernels.dtype, device=kernels.device).reshape(1, n, c, height, width)
    columns = circular_conv(kernels, basis.expand(b, n, c, height, width))  # (B, N inputs, c, h, w)
    return columns.reshape(b, n, n).mT


def cnn_forward(kernels, x):
    """Pre-activations Y_0..Y_L of the circular ReLU CNN, ``Y_0 = x`` (B, M, c, h, w), ``Y_l = conv_l(relu(Y_l-1))``
    (full eq. (1) with convolutions for the dense layers)."""
    ys = [x]
    for k in kernels:
        ys.append(circular_conv(k, torch.relu(ys[-1])))
    return ys


def cnn_factors(kernels, x0) -> list[Factor]:
    """Jacobian factors ``(W_l, d_{l-1})`` of dY_L/dY_0 at the input x0 (B, c, h, w): ``W_l`` the dense circular
    convolution (:func:`circular_conv_matrix`), ``d_{l-1} = 1{Y_l-1 > 0}`` flattened the same way (the factor list
    of :func:`theorems.training.mlp_factors`, for the spectral core)."""
    b, c, h, w = x0.shape
    with torch.no_grad():
        ys = cnn_forward(kernels, x0.unsqueeze(1))
        return [Factor(circular_conv_matrix(k, h, w), (y[:, 0] > 0).reshape(b, c * h * w).to(k.dtype))
                for k, y in zip(kernels, ys[:-1])]
