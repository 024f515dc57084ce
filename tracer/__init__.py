"""Recording: the CLI, launch, eBPF probes, the in-process agent, the sampler, the capture writer."""

__version__ = "0.1.0"
