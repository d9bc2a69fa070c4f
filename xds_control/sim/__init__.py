"""The evaluation harness: a discrete-event simulator of an inference fleet driven by the real decision core.

Modules, in the order data flows:

* :mod:`.trace` — load ``timestamp_s,input_tokens,output_tokens`` CSVs, make synthetic surges;
* :mod:`.controller` — what a controller sees (:class:`~.controller.FleetObservation`) and answers
  (:class:`~.controller.Action`); the ``fixed`` baseline;
* :mod:`.policies` — adapters running ``xds_control.policies.*.decide`` and
  ``xds_control.planning.plan_service`` with simulated time;
* :mod:`.engine` — the simulator (:func:`~.engine.simulate`); replica costs come from
  :mod:`xds_control.fleet.costmodel`;
* :mod:`.metrics` — the Table 2 metrics of one run (every ``--json`` key is defined there);
* :mod:`.report` — terminal table, PNG, JSON; :mod:`.runner` — several policies over one trace.

``xds-control evaluate`` (:mod:`xds_control.cli.evaluate`) is the command line; EVALUATION.md has
the results on the tuning windows.
"""
