"""Samplers: HMC (baseline and forward-KL training data); neural MCMC and flow samplers follow."""
from .hmc import HMC, HMCStep

__all__ = ["HMC", "HMCStep"]
