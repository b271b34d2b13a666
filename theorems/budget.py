"""The suite's false-fail budget: one place holds the budget and the count it is split over.

A run of the suite must fail spuriously (a correct library, a correct theory) with probability at most
:data:`SUITE_FALSE_FAIL_RATE`, whatever the master seed.  The budget is split by Bonferroni over
:data:`ASSERTION_SLOTS` equal slots, so every statistical assertion runs at the per-assertion rate
:data:`PER_ASSERTION_RATE` (the level of every interval and classical test, ``theorems.stats.FALSE_FAIL_RATE``):

* a **check** (``verdict.check``) uses one slot: its interval has level ``1 - PER_ASSERTION_RATE``; a check made of
  ``family`` comparisons of one kind (k exponents, say) splits its slot over them (``compare(..., family=k)``);
* a **negative control** (``verdict.reject``) uses one slot: its spurious failure is a miss (the wrong prediction
  not rejected), whose probability is 1 - power; it is designed so that the estimated miss probability
  (``Comparison.miss_probability``, reported per control) stays below the slot's rate;
* a test that asserts a random outcome outside the recorder (a library test at the suite's level, a Hypothesis
  property over several examples) declares its slots with ``@pytest.mark.statistical(k)``.

The per-assertion level must not depend on which tests a run selects (``-k``, one module), or the numbers would
depend on the selection: it is fixed here, for the largest profile, and the report counts the slots a run
actually used.  A run that uses more slots than :data:`ASSERTION_SLOTS` overspends the budget and fails
(raise the count here, which tightens every level, never the other way round).
"""

from __future__ import annotations

__all__ = ["SUITE_FALSE_FAIL_RATE", "ASSERTION_SLOTS", "PER_ASSERTION_RATE", "budget_summary"]

#: P(any spurious failure) for one whole run of the suite, quick or full profile.
SUITE_FALSE_FAIL_RATE = 0.01

#: Upper bound on the statistical assertions (slots) one run makes, in either profile, library tests included: the
#: quick run of ``checks`` used 251 at the start of session 19 (207 in ``checks/claims``, 44 in ``checks/core``); the
#: full profile adds about 60 (its extra cases at each function's quick count, and the controls that only the full
#: profile asserts), so about 310; the rest is room for new checks.  It was 250 until the quick run outgrew it.
ASSERTION_SLOTS = 400

#: The false-fail rate of one slot: the level of every interval and classical test in the suite.
PER_ASSERTION_RATE = SUITE_FALSE_FAIL_RATE / ASSERTION_SLOTS


def budget_summary(slots_used: float, control_miss: float) -> dict:
    """The report's budget block: the budget, the count it is split over, the per-assertion level, the slots this
    run used, and the design's estimated spurious-failure probability (checks at their level, plus the estimated
    miss probabilities of the negative controls)."""
    return {
        "suite_false_fail_rate": SUITE_FALSE_FAIL_RATE,
        "assertion_slots": ASSERTION_SLOTS,
        "per_assertion_rate": PER_ASSERTION_RATE,
        "slots_used": round(float(slots_used), 3),
        "within_budget": slots_used <= ASSERTION_SLOTS,
        "estimated_false_fail_probability": float(control_miss),
    }
