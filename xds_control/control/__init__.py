"""The control step: one pure function from what a tick observes to every action it takes.

Driven by two worlds: the live runtime (:mod:`xds_control.runtime.loop`) and the simulator
(:mod:`xds_control.sim.adapter`). Operator overrides (:mod:`.operator`) are one of its inputs.
"""
