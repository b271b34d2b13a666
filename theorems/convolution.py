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

Training: :func:`train_cnn` (full-batch GD by :func:`theorems.training.descend` with a hand-written backward,
:class:`CircularCNN`) and :class:`CNNOnDigits`, the network that the trainability check (critical-init, statement
trainability-cnn: App. G.6) trains on the shipped digits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .ensembles import Factor
from .spectral import jacobian_product, log_spectral_norm
from .training import DigitsNetwork, GradientDescentModel, TrainingRun, _output_losses, descend, regression_data
from .validation import check_int, check_real

__all__ = ["sample_conv_kernels", "circular_conv", "circular_conv_matrix", "cnn_forward", "cnn_factors", "cnn_losses",
           "cnn_log_norm", "CircularCNN", "CIRCULAR_CNN", "train_cnn", "CNNOnDigits"]


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
    out = _grouped_conv(kernels, _wrap(x.transpose(0, 1).reshape(m, b * c, h, w), kernels.shape[-1] // 2))
    return out.reshape(m, b, c, h, w).transpose(0, 1)


def _wrap(flat: torch.Tensor, pad: int) -> torch.Tensor:
    """The maps (M, B c, h, w) with ``pad`` rows and columns wrapped around each side (circular padding)."""
    return F.pad(flat, (pad, pad, pad, pad), mode="circular") if pad else flat


def _grouped_conv(kernels: torch.Tensor, wrapped: torch.Tensor) -> torch.Tensor:
    """Each network's convolution of its wrapped maps (M, B c, h + 2p, w + 2p) -> (M, B c, h, w): one grouped
    ``conv2d`` (the networks are the groups)."""
    b, c = kernels.shape[:2]
    return F.conv2d(wrapped, kernels.reshape(b * c, c, *kernels.shape[-2:]), groups=b)


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


def cnn_losses(kernels, x, z) -> torch.Tensor:
    """Per-network loss ``(2N)^-1 ||Y_L(x) - z||^2`` averaged over the M samples (B,), ``N = c h w`` (the MLP's loss of
    full §4 on the flattened maps; :func:`train_cnn` descends it)."""
    return CIRCULAR_CNN.losses(cnn_forward(kernels, x)[-1], z)


def cnn_log_norm(kernels, x0) -> torch.Tensor:
    """log||J|| (B,) of the CNN at the input maps x0 (B, c, h, w), renormalised at every layer (-inf: a collapse)."""
    return log_spectral_norm(jacobian_product(cnn_factors([k.detach() for k in kernels], x0), renorm_every=1))


class CircularCNN(GradientDescentModel):
    """:func:`theorems.training.descend`'s model of the circular ReLU CNN (:func:`cnn_forward`): kernels (B, c, c, k, k),
    inputs and outputs (B, M, c, h, w).  Inside a step the maps are kept as grouped ``conv2d`` takes them, (M, B c,
    ...), the cache holding each layer's wrapped input relu(Y_l-1).  Backward: the adjoint of a circular convolution
    is the circular convolution with the kernel's channels swapped and its window flipped; the kernel's gradient is
    ``conv2d``'s weight gradient on the wrapped input (materialised: it is only c² k² per network)."""

    def activations(self, ws, x):
        b, m, c, h, w = x.shape
        pad = ws[0].shape[-1] // 2
        hidden, cache = torch.relu(x).transpose(0, 1).reshape(m, b * c, h, w), []
        for i, k in enumerate(ws):
            cache.append(_wrap(hidden, pad))
            y = _grouped_conv(k, cache[-1])
            if i + 1 < len(ws):
                hidden = torch.relu(y)
        return cache, y.reshape(m, b, c, h, w).transpose(0, 1)

    def losses(self, y, z):
        return _output_losses(y.flatten(2), z.flatten(2))

    def output_error(self, y, z, rates):
        return (y - z) * (rates.reshape(-1, 1, 1, 1, 1) / (z[0, 0].numel() * z.shape[1]))  # (y - z) / (N M) x lr

    def increments(self, ws, cache, delta_out):
        b, m, c, h, w = delta_out.shape
        pad = ws[0].shape[-1] // 2
        deltas = [delta_out.transpose(0, 1).reshape(m, b * c, h, w)]
        for k, wrapped in zip(ws[:0:-1], cache[:0:-1]):
            adjoint = k.transpose(1, 2).flip(-2, -1)
            deltas.append(_grouped_conv(adjoint, _wrap(deltas[-1], pad)) * (_interior(wrapped, pad) > 0))
        return deltas[::-1]

    def increment_bound(self, ws, deltas, cache):
        b = ws[0].shape[0]
        terms = deltas[0].shape[0] * deltas[0].shape[-2] * deltas[0].shape[-1]  # a kernel entry sums M h w products
        return torch.stack([_per_network_amax(d, b) * _per_network_amax(h, b) for d, h in zip(deltas, cache)]
                           ).amax(0) * terms

    def silence(self, delta, h, diverged):
        b = diverged.shape[0]
        delta.view(delta.shape[0], b, -1)[:, diverged] = 0.0
        h.view(h.shape[0], b, -1)[:, diverged] = 0.0

    def step(self, w, delta, h):
        b, c, k = w.shape[0], w.shape[1], w.shape[-1]
        w.view(b * c, c, k, k).sub_(torch.nn.grad.conv2d_weight(h, (b * c, c, k, k), delta, groups=b))

    def log_norm(self, ws, x_ref):
        return cnn_log_norm(ws, x_ref)


def _interior(wrapped: torch.Tensor, pad: int) -> torch.Tensor:
    return wrapped[..., pad:wrapped.shape[-2] - pad, pad:wrapped.shape[-1] - pad] if pad else wrapped


def _per_network_amax(t: torch.Tensor, batch: int) -> torch.Tensor:
    """max |t| per network (B,) of maps (M, B c, ...)."""
    return t.abs().reshape(t.shape[0], batch, -1).amax(dim=(0, 2))


#: :func:`train_cnn`'s model.
CIRCULAR_CNN = CircularCNN()


def train_cnn(kernels, x, z, lr, steps: int, *, record_every: int = 1, x_ref=None,
              record_norms: bool = True) -> TrainingRun:
    """Full-batch GD on the CNN's kernels (list of (B, c, c, k, k)) for input maps x (B, M, c, h, w) and targets z
    (like x), loss :func:`cnn_losses`; as :func:`theorems.training.train_mlp` otherwise (records, divergence;
    ``x_ref``: (B, c, h, w), default each network's first input)."""
    return descend(CIRCULAR_CNN, kernels, x, z, lr, steps, record_every=record_every,
                   x_ref=x[:, 0] if x_ref is None else x_ref, record_norms=record_norms)


def cnn_factors(kernels, x0) -> list[Factor]:
    """Jacobian factors ``(W_l, d_{l-1})`` of dY_L/dY_0 at the input x0 (B, c, h, w): ``W_l`` the dense circular
    convolution (:func:`circular_conv_matrix`), ``d_{l-1} = 1{Y_l-1 > 0}`` flattened the same way (the factor list
    of :func:`theorems.training.mlp_factors`, for the spectral core)."""
    b, c, h, w = x0.shape
    with torch.no_grad():
        ys = cnn_forward(kernels, x0.unsqueeze(1))
        return [Factor(circular_conv_matrix(k, h, w), (y[:, 0] > 0).reshape(b, c * h * w).to(k.dtype))
                for k, y in zip(kernels, ys[:-1])]


class CNNOnDigits(DigitsNetwork):
    """The circular ReLU CNN on the shipped 8x8 digits (:func:`theorems.training.trainability_of_variants`; full App.
    G.6's stand-in): ``channels`` maps of 8 x 8, the standardised digit in map 0 and the others 0; targets the one-hot
    class in the first 10 of the N = 64 ``channels`` flattened outputs, scaled to norm sqrt(N/10) (the MLP's targets,
    :func:`theorems.training.regression_data`, at its N); He kernels of ``size`` at σ² = 2.  The defaults are the
    trainability check's (critical-init, statement trainability-cnn)."""

    model, dense = CIRCULAR_CNN, False

    def __init__(self, channels: int = 8, size: int = 3):
        self.channels = check_int("channels", channels, minimum=1)
        self.size = check_int("size", size, minimum=1)
        if self.size % 2 == 0:
            raise ValueError(f"size must be an odd integer >= 1 (a centred window); got {size}")

    def __repr__(self):
        return f"CNNOnDigits(channels={self.channels}, size={self.size})"

    def data(self, batch, samples, gen, device):
        pixels, onehot = regression_data("digits", batch, samples, 64, gen, device)
        x = pixels.new_zeros(batch, samples, self.channels, 8, 8)
        x[:, :, 0] = pixels.reshape(batch, samples, 8, 8)
        z = onehot.new_zeros(batch, samples, self.channels * 64)
        z[..., :64] = onehot * math.sqrt(self.channels)
        return x, z.reshape(x.shape)

    def critical_weights(self, batch, depth, gen, device):
        return [sample_conv_kernels(batch, self.channels, self.size, 2.0, gen, device=device) for _ in range(depth)]

    def outputs(self, ws, x):
        return cnn_forward(ws, x)[-1].flatten(2)
