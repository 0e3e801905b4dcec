"""Samplers: HMC (baseline and forward-KL training data), i.i.d. flow samples with importance weights,
and neural MCMC (independent Metropolis–Hastings with flow proposals)."""
from .flow import FlowBatch, flow_batches
from .hmc import HMC, HMCStep
from .nmcmc import ChainState, NMCMCBatch, NMCMCChainsBatch, metropolize, nmcmc_batches, nmcmc_chains

__all__ = ["HMC", "HMCStep", "FlowBatch", "flow_batches", "ChainState", "NMCMCBatch", "NMCMCChainsBatch",
           "metropolize", "nmcmc_batches", "nmcmc_chains"]
