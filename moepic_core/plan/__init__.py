"""Planning without torch: routing traces, cache replay, the cost model, the solver, the simulator.

Entry point: `plan.planning.solve_layout` (a `Layout` for a model, a budget and a trace).
"""
