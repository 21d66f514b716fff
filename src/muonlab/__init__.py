"""muonlab: the Muon optimizer (Moonlight's scalable variant) and a workbench for its claims."""

__version__ = "0.1.0"
