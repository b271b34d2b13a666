"""theorems: an executable verification suite for theorems about deep-network input-output Jacobians.

Modules: ``ensembles`` (samplers), ``spectral`` (products, norms, singular values, Lyapunov
spectra), ``predictions`` (closed forms), ``stats`` (calibrated comparisons), ``claims`` (the
registry), ``reporting`` (the pytest plugin writing ``reports/``), ``training`` (GD trainer).
"""

__version__ = "0.1.0"
