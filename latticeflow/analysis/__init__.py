"""Statistical analysis of lattice ensembles.

Wolff's Gamma method for primary and derived observables (``gamma``), for array observables with
their covariance, effective masses and correlated correlator fits (``gamma_array``, ``correlators``), jackknife,
reweighting and effective sample sizes of flow samples (``resampling``), plain-text result
tables (``table``), summaries over seeds and runs (``summary``), figures (``plots``) and an optional
pyerrors json.gz export (``export``).
"""
from .correlators import correlator_lines, plot_correlator
from .export import dump_pyerrors_json, load_pyerrors_json, pyerrors_array_entry, pyerrors_obs_entry
from .gamma import (GammaResult, autocorrelation, gamma_method, gamma_method_derived,
                    split_replicas)
from .gamma_array import (CorrelatorFit, EffectiveMass, GammaArrayResult, correlated_fit, effective_mass,
                          gamma_method_array)
from .resampling import forward_ess, jackknife, reverse_ess, reweight
from .plots import figure
from .summary import *  # noqa: F401,F403 (plain functions on arrays; names in summary.__all__)
from .summary import __all__ as _summary
from .table import ObservableRow, format_cell, format_table, format_value_error, text_table

__all__ = [
    "GammaResult",
    "gamma_method",
    "gamma_method_derived",
    "autocorrelation",
    "GammaArrayResult",
    "gamma_method_array",
    "EffectiveMass",
    "effective_mass",
    "CorrelatorFit",
    "correlated_fit",
    "correlator_lines",
    "plot_correlator",
    "pyerrors_array_entry",
    "jackknife",
    "split_replicas",
    "reverse_ess",
    "forward_ess",
    "reweight",
    "ObservableRow",
    "format_table",
    "format_value_error",
    "dump_pyerrors_json",
    "load_pyerrors_json",
    "pyerrors_obs_entry",
    "format_cell",
    "text_table",
    "figure",
    *_summary,
]
