"""Floor 5 — prediction: one case in, one result out (:func:`~.case.predict_case`), with the
class-activation heatmap, the patient's survival read-out, batches over a cohort and the
overlay figure.

May import ``core``, ``imaging``, ``networks`` and ``survival``.
"""
