"""A user project's conftest: register the claim its checks verify (the plugin comes with ``pip install theorems``)."""

from theorems import register_claim

register_claim(
    "linear-image-norm",
    source="a reader's derivation (Bartlett decomposition of a Gaussian product)",
    printed="For a deep linear network with iid N(0, σ²/n) weights and a fixed unit input u, log||J u||² is a sum of L "
            "iid terms log(σ² χ²_n / n): E log||J u|| = (L/2) (log σ² + ψ(n/2) - log(n/2)) at every finite n.",
    reading="The mean of log||J u|| over sampled networks equals the closed form (no model error: it is exact); the "
            "infinite-width rate (L/2) log σ² and a 2% error in σ² are rejected.",
)
