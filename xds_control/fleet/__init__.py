"""Fleet emulation, shared by the demo and the simulator: the replica cost model (:mod:`.costmodel`),
request traces (:mod:`.trace`), the open-loop load generator (:mod:`.loadgen`) and the emulated
OpenAI-compatible replica (:mod:`.replica`)."""
