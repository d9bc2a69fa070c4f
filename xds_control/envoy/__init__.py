"""Envoy tooling: bootstrap rendering (:mod:`.bootstrap`), ``envoy --mode validate`` checks
(:mod:`.check`) and running an Envoy process (:mod:`.process`)."""
