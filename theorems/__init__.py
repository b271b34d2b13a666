"""theorems: an executable verification suite for theorems about deep-network input-output Jacobians.

Modules: ``ensembles`` (samplers), ``spectral`` (products, norms, singular values, Lyapunov
spectra), ``predictions`` (closed forms), ``stats`` (calibrated comparisons), ``claims`` (the
registry), ``reporting`` (verdicts -> ``reports/``), ``plugin`` (the pytest plugin: options, fixtures, markers),
``training`` (GD trainer).  ``register_claim`` registers a claim of your own for ``@pytest.mark.claim``.
"""

__version__ = "0.1.0"

from .claims import Statement, register_claim  # noqa: E402  (light: no torch)

__all__ = ["register_claim", "Statement", "__version__"]
