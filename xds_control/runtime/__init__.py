"""The live runtime: the control plane's lifecycle (:mod:`.app`), the live loop that gathers
observations and carries out the control step's actions (:mod:`.loop`), and the demo (:mod:`.demo`).

Everything with a clock, a socket or a task lives here or in the adapters below it.
"""
