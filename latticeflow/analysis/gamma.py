"""Gamma-method error analysis of Markov-chain Monte Carlo data.

Implements U. Wolff, "Monte Carlo errors with less errors", Comput. Phys. Commun. 156 (2004)
143 [hep-lat/0306017] for one observable measured on one or several replicas r = 1..R of
lengths N_r (N = sum_r N_r):

* autocorrelation function, by FFT, with the per-replica means replaced by the global mean
  ``abar``::

      Gamma(t) = sum_r sum_{i=1}^{N_r-t} (a_i^r - abar)(a_{i+t}^r - abar) / sum_r (N_r - t)

* integrated autocorrelation time ``tau_int(W) = 1/2 + sum_{t=1}^{W} rho(t)``,
  ``rho(t) = Gamma(t)/Gamma(0)``;
* automatic window: the first W with
  ``g(W) = exp(-W/tau) - tau/sqrt(W N) < 0``, ``tau = S / ln((2 tau_int(W)+1)/(2 tau_int(W)-1))``
  (tau tiny, i.e. stop, once tau_int(W) <= 1/2). For anticorrelated chains, where rho(t)
  oscillates (HMC trajectories near half a period of a slow mode flip m -> -m) and this stop comes
  at W = 1 with tau_int(1) far below the true value, the window is widened to Geyer's initial
  positive sequence (Stat. Sci. 7 (1992) 473): pairs rho(2k) + rho(2k+1) are summed up to the
  first non-positive pair;
* bias correction ``Gamma(t) -> Gamma(t) + C_F(W)/N``, hence
  ``C_F(W) -> C_F(W) (1 + (2W+1)/N)``; the error of the mean is ``sqrt(C_F(W)/N)`` and
  ``tau_int = C_F(W) / (2 Gamma(0))``;
* error of the error ``sigma sqrt((W + 1/2)/N)`` and Wolff's eq. (42)
  ``delta tau_int = 2 tau_int sqrt((W + 1/2 - tau_int)/N)``.

If C_F(W) <= 0 (strongly anticorrelated or very short data, where Wolff's code aborts) a
RuntimeWarning is issued and the naive W = 0 estimate (tau_int = 1/2) is returned.

Derived quantities F = f(A_1..A_k) use Wolff's linearised propagation: the data are projected
on the gradient of f at the means (central differences), and the projected series is analysed
as above.  The O(1/N) bias of f(means) is *not* corrected.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import fft as _fft

__all__ = [
    "GammaResult",
    "gamma_method",
    "gamma_method_derived",
    "autocorrelation",
    "split_replicas",
]

# Relative step of the central differences used for the gradient of derived quantities.
_REL_STEP = 1e-5


@dataclass(frozen=True)
class GammaResult:
    """Mean ± error of one observable with its integrated autocorrelation time.

    ``n`` is the total number of samples summed over the ``n_replicas`` replicas and
    ``window`` the summation window W chosen automatically (0 for a constant series and for
    the naive fallback on anticorrelated data).
    """

    mean: float
    error: float
    error_of_error: float
    tau_int: float
    tau_int_error: float
    window: int
    n: int
    n_replicas: int

    def as_dict(self) -> dict:
        """Plain-Python dict (JSON-serialisable; non-finite floats become None)."""
        out: dict = {}
        for key, val in asdict(self).items():
            if isinstance(val, (int, np.integer)) and not isinstance(val, bool):
                out[key] = int(val)
            else:
                val = float(val)
                out[key] = val if math.isfinite(val) else None
        return out

    def __str__(self) -> str:
        return (f"{self.mean:.6g} ± {self.error:.2g} "
                f"(tau_int = {self.tau_int:.3g} ± {self.tau_int_error:.2g}, W = {self.window}, "
                f"N = {self.n}, R = {self.n_replicas})")


def _to_numpy(x: object) -> object:
    """Detach torch tensors (without importing torch); leave everything else alone."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()  # type: ignore[attr-defined]
        try:
            return t.numpy()
        except TypeError:  # dtypes numpy lacks, e.g. bfloat16
            return t.double().numpy()
    return x


def _as_replicas(data: object, who: str) -> list[np.ndarray]:
    """Normalise one series / a 2-D array (rows = replicas) / a list of replicas."""
    data = _to_numpy(data)
    if isinstance(data, np.ndarray):
        if data.ndim == 1:
            reps = [data]
        elif data.ndim == 2:
            reps = list(data)
        else:
            raise ValueError(f"{who} expects a 1-D series, a 2-D array (one row per replica) "
                             f"or a list of 1-D replicas, got an array of shape {data.shape}")
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        if len(data) == 0:
            raise ValueError(f"{who} got no data (an empty list of replicas)")
        if all(np.ndim(_to_numpy(d)) == 0 for d in data):
            reps = [np.asarray(data, dtype=float)]  # a plain list of numbers is one series
        else:
            reps = [_to_numpy(d) for d in data]
    else:
        raise ValueError(f"{who} expects a 1-D series or a list of replicas, "
                         f"got {type(data).__name__}")
    out = []
    for r, rep in enumerate(reps):
        arr = np.asarray(rep, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"{who}: replica {r} must be 1-D, got shape {arr.shape}")
        if arr.size < 2:
            raise ValueError(f"{who} needs at least 2 samples per replica, got {arr.size}")
        if not np.all(np.isfinite(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise ValueError(f"{who}: replica {r} contains a non-finite value at index {bad}")
        out.append(arr)
    return out


def _autocovariance(reps: Sequence[np.ndarray], mean: float, max_lag: int) -> np.ndarray:
    """Gamma(t), t = 0..max_lag, summed over replicas and normalised by sum_r (N_r - t)."""
    lags = np.arange(max_lag + 1)
    total = np.zeros(max_lag + 1)
    counts = np.zeros(max_lag + 1)
    for rep in reps:  # loop over replicas only; each replica is one FFT
        n = rep.size
        nfft = _fft.next_fast_len(n + max_lag + 1, real=True)  # no circular wrap-around
        spec = _fft.rfft(rep - mean, nfft)
        acf = _fft.irfft(spec.real**2 + spec.imag**2, nfft)[: max_lag + 1]
        keep = min(max_lag + 1, n)
        total[:keep] += acf[:keep]
        counts += np.maximum(n - lags, 0)
    return total / counts


def _max_lag(reps: Sequence[np.ndarray]) -> int:
    return max(1, min(rep.size for rep in reps) // 2)


def autocorrelation(data: np.ndarray | Sequence[np.ndarray],
                    max_lag: int | None = None) -> np.ndarray:
    """Normalised autocorrelation rho(t) = Gamma(t)/Gamma(0) for t = 0..max_lag.

    ``data`` is one series or a list of replicas (global mean, see module docstring);
    ``max_lag`` defaults to min_r N_r // 2.  A constant series gives rho = [1, 0, 0, ...].
    """
    reps = _as_replicas(data, "autocorrelation")
    lag = _max_lag(reps) if max_lag is None else int(max_lag)
    if not 0 <= lag < min(rep.size for rep in reps):
        raise ValueError(f"autocorrelation: max_lag must be in [0, {min(r.size for r in reps) - 1}]"
                         f", got {max_lag}")
    if _is_constant(reps):
        rho = np.zeros(lag + 1)
        rho[0] = 1.0
        return rho
    n = sum(rep.size for rep in reps)
    gamma = _autocovariance(reps, sum(rep.sum() for rep in reps) / n, lag)
    return gamma / gamma[0]


def _is_constant(reps: Sequence[np.ndarray]) -> bool:
    first = reps[0][0]
    return all(bool(np.all(rep == first)) for rep in reps)


def _choose_window(gamma: np.ndarray, n: int, S: float) -> tuple[int, bool]:
    """Wolff's automatic window; returns (W, found)."""
    rho = gamma / gamma[0]
    tau_w_int = 0.5 + np.cumsum(rho[1:])  # tau_int(W) for W = 1..max_lag
    w = np.arange(1, gamma.size)
    above = tau_w_int > 0.5
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        tau = S / np.log((2.0 * tau_w_int + 1.0) / (2.0 * tau_w_int - 1.0))
        g = np.where(above, np.exp(-w / tau) - tau / np.sqrt(w * float(n)), -1.0)
    hits = np.flatnonzero(g < 0)
    if hits.size:
        first = int(hits[0])
        if not above[first]:  # stopped because tau_int(W) <= 1/2: an oscillating rho(t)
            m = (rho.size - 1) // 2
            pairs = rho[0:2 * m:2] + rho[1:2 * m:2]  # rho(2k) + rho(2k+1), k = 0 .. m-1
            bad = np.flatnonzero(pairs <= 0)
            k = int(bad[0]) if bad.size else pairs.size
            return max(int(w[first]), 2 * k - 1, 0), True
        return int(w[first]), True
    return int(w[-1]), False


def _analyse(reps: Sequence[np.ndarray], mean: float, S: float, who: str) -> GammaResult:
    """Gamma-method statistics of the series ``reps`` reported around ``mean``."""
    n = int(sum(rep.size for rep in reps))
    n_rep = len(reps)
    if _is_constant(reps):
        return GammaResult(float(mean), 0.0, 0.0, 0.5, 0.0, 0, n, n_rep)
    gbar = sum(float(rep.sum()) for rep in reps) / n
    gamma = _autocovariance(reps, gbar, _max_lag(reps))
    if not gamma[0] > 0.0:  # fluctuations below round-off
        return GammaResult(float(mean), 0.0, 0.0, 0.5, 0.0, 0, n, n_rep)
    window, found = _choose_window(gamma, n, S)
    if not found:
        warnings.warn(f"{who}: automatic windowing found no W <= {window} with g(W) < 0; "
                      f"using W = {window}. The series is too short for its autocorrelation "
                      "time and the error is probably underestimated.", RuntimeWarning,
                      stacklevel=3)
    c_f = gamma[0] + 2.0 * gamma[1: window + 1].sum()
    if c_f <= 0.0:  # Wolff's code stops here; we fall back to the naive (W = 0) estimate
        warnings.warn(f"{who}: estimated C_F(W={window}) = {c_f:.3g} <= 0 (anticorrelated or "
                      "very short data); falling back to the naive error with tau_int = 1/2.",
                      RuntimeWarning, stacklevel=3)
        window, c_f = 0, gamma[0]
    gamma = gamma + c_f / n  # Wolff's bias correction of Gamma(t)
    c_f = gamma[0] + 2.0 * gamma[1: window + 1].sum()  # = C_F(W) (1 + (2W+1)/N)
    tau_int = c_f / (2.0 * gamma[0])
    error = math.sqrt(c_f / n)
    error_of_error = error * math.sqrt((window + 0.5) / n)
    tau_err = 2.0 * tau_int * math.sqrt(max(window + 0.5 - tau_int, 0.0) / n)
    return GammaResult(float(mean), float(error), float(error_of_error), float(tau_int),
                       float(tau_err), window, n, n_rep)


def _check_S(S: float, who: str) -> float:
    S = float(S)
    if not (math.isfinite(S) and S > 0):
        raise ValueError(f"{who}: S must be a positive number (Wolff recommends 1-2), got {S}")
    return S


def gamma_method(data: np.ndarray | Sequence[np.ndarray], S: float = 2.0) -> GammaResult:
    """Mean, error and tau_int of a primary observable by Wolff's Gamma method.

    ``data`` is one 1-D series, a 2-D array (one row per replica) or a list of 1-D replicas,
    each a Markov chain in Monte Carlo order.  A constant series gives error 0, tau_int 1/2.
    """
    S = _check_S(S, "gamma_method")
    reps = _as_replicas(data, "gamma_method")
    n = sum(rep.size for rep in reps)
    mean = sum(float(rep.sum()) for rep in reps) / n
    return _analyse(reps, mean, S, "gamma_method")


def _gradient(func: Callable[..., float], means: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Central-difference gradient with step _REL_STEP * max(|mean|, std) per argument."""
    grad = np.empty(means.size)
    for a in range(means.size):  # loop over observables, not samples
        h = _REL_STEP * (scales[a] if scales[a] > 0 else 1.0)
        up, down = means.copy(), means.copy()
        up[a] += h
        down[a] -= h
        grad[a] = (float(func(*up)) - float(func(*down))) / (up[a] - down[a])
    if not np.all(np.isfinite(grad)):
        raise ValueError(f"gamma_method_derived: the gradient of func at the means {means.tolist()}"
                         f" is not finite ({grad.tolist()})")
    return grad


def gamma_method_derived(func: Callable[..., float],
                         data: Sequence[np.ndarray | Sequence[np.ndarray]],
                         S: float = 2.0) -> GammaResult:
    """Gamma-method analysis of ``func(mean_1, ..., mean_k)`` by linearised propagation.

    ``data[i]`` is primary observable i as one series or a list of replicas, with the same
    replica structure for every i.  The error comes from the series projected on the
    numerical gradient of ``func`` at the means; the mean is ``func(means)`` without bias
    correction.
    """
    who = "gamma_method_derived"
    S = _check_S(S, who)
    if isinstance(data, np.ndarray) and data.ndim == 1:
        raise ValueError(f"{who}: data must be a sequence of observables, e.g. [x] for one")
    if len(data) == 0:
        raise ValueError(f"{who} needs at least one observable, got none")
    obs = [_as_replicas(d, who) for d in data]
    shape = [rep.size for rep in obs[0]]
    for i, o in enumerate(obs[1:], start=1):
        if [rep.size for rep in o] != shape:
            raise ValueError(f"{who}: observable {i} has replica lengths "
                             f"{[rep.size for rep in o]}, observable 0 has {shape}")
    n = sum(shape)
    means = np.array([sum(float(rep.sum()) for rep in o) / n for o in obs])
    value = float(func(*means))
    if not math.isfinite(value):
        raise ValueError(f"{who}: func at the means {means.tolist()} is {value}")
    stds = np.array([math.sqrt(sum(float(((rep - m) ** 2).sum()) for rep in o) / n)
                     for o, m in zip(obs, means)])
    grad = _gradient(func, means, np.maximum(np.abs(means), stds))
    projected = [grad @ np.stack([o[r] - m for o, m in zip(obs, means)])
                 for r in range(len(shape))]
    return _analyse(projected, value, S, who)


def split_replicas(values: np.ndarray, chain: np.ndarray, mc_index: np.ndarray
                   ) -> list[np.ndarray]:
    """Split ensemble rows (any order) into one series per chain, sorted by ``mc_index``.

    Replicas come in increasing ``chain`` id; ``values`` may be (N,) or (N, ...), each replica
    is then (N_r,) or (N_r, ...).  Duplicate (chain, mc_index) pairs are an error.
    """
    values = np.asarray(_to_numpy(values))
    chain = np.asarray(_to_numpy(chain)).reshape(-1)
    mc_index = np.asarray(_to_numpy(mc_index)).reshape(-1)
    if values.ndim == 0 or values.shape[0] == 0:
        raise ValueError("split_replicas needs at least one row, got none")
    if not chain.size == mc_index.size == values.shape[0]:
        raise ValueError(f"split_replicas: values has {values.shape[0]} rows but chain has "
                         f"{chain.size} and mc_index {mc_index.size}")
    order = np.lexsort((mc_index, chain))
    chain_s, index_s = chain[order], mc_index[order]
    same_chain = chain_s[1:] == chain_s[:-1]
    dup = np.flatnonzero(same_chain & (index_s[1:] == index_s[:-1]))
    if dup.size:
        i = dup[0]
        raise ValueError(f"split_replicas: chain {chain_s[i]} has mc_index {index_s[i]} twice")
    cuts = np.flatnonzero(~same_chain) + 1
    return np.split(values[order], cuts)
