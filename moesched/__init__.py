"""moesched: profile, simulate, solve and execute MoE training schedules.

Pure Python (networkx, pandas, matplotlib); no torch at import time. The executor that
runs plans on torch.distributed lives in the separate ``executor`` package.
"""
__version__ = "0.1.0"
