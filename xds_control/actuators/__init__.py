"""Actuators: what turns a plan into running replicas. Scalers behind one protocol (:mod:`.base`):
local processes (:mod:`.local`) and Kubernetes Deployments (:mod:`.kubernetes`); Lease leader
election (:mod:`.leader`) and its wiring into a running control plane (:mod:`.kube_wiring`)."""
