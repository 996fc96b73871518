"""Recipe -> :class:`~mergehub.plan.planner.Plan`: every output tensor with its inputs, parameters and
dtypes, checked against the method's contract; multi-stage recipes (:mod:`.stages`), memory estimates and
fingerprints that identify a plan's inputs. A plan is pure data: no tensor data is read.
"""
