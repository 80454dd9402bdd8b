"""Confidence intervals over independent repeats (seeds): the one implementation every report uses.

Light on purpose (numpy and scipy only, no torch), so any layer may import it.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from fiberlab.errors import BadInput


def t_interval(samples, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student's t interval over independent samples (seeds).

    ``half = t_{(1+c)/2, n-1} * sd / sqrt(n)`` with ``sd`` the sample standard deviation (ddof 1).
    n = 1 gives half-width ``nan`` (no spread can be estimated; a table should say so, not print 0);
    n = 0 gives ``(nan, nan)``. Non-finite samples are kept and make the result nan: filter first.
    """
    if not 0.0 < confidence < 1.0:
        raise BadInput(f"confidence {confidence!r} is not usable; a value in (0, 1) is allowed")
    x = np.asarray(samples, dtype=float).ravel()
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    mean = float(np.mean(x))
    if n == 1:
        return mean, math.nan
    sd = float(np.std(x, ddof=1))
    return mean, float(sps.t.ppf((1.0 + confidence) / 2.0, n - 1) * sd / math.sqrt(n))
