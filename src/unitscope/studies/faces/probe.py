"""Face-vs-non-face linear probes, many at once.

The probe is scikit-learn's default `LogisticRegression` (L2, C = 1, intercept not penalised) on
standardised activations (a `StandardScaler` fit on the training rows), scored by stratified k-fold
cross-validation: the seed study's protocol. Interventions need it for hundreds of conditions, so
`fit_logistic` fits K independent problems in one batched L-BFGS (each column has its own history,
step and convergence test) with matrix products over all K at once.

Zeroing or mean-replacing a channel makes it constant, and a standardised constant feature is 0, so
a probe retrained on a condition's activations equals a probe on the intact standardised activations
whose weights are held at zero on the ablated channels: `feature_mask` expresses exactly that, and
all conditions then share one design matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold, train_test_split
from tqdm import tqdm

from unitscope.studies.faces.selection import FacesError


@dataclass
class LogisticFit:
    weights: torch.Tensor  # [K, d] (zero where masked)
    intercept: torch.Tensor  # [K]
    n_iter: int
    converged: torch.Tensor  # [K] bool: stopped by a tolerance (gradient, or the precision floor), not max_iter


def _design_products(X: torch.Tensor):
    """(forward, backward) for a shared [n, d] or per-problem [K, n, d] design."""
    if X.dim() == 2:
        return (lambda W: X @ W.T), (lambda R: R.T @ X)  # [n, K]; [K, d]
    return (lambda W: torch.einsum("knd,kd->nk", X, W)), (lambda R: torch.einsum("nk,knd->kd", R, X))


def fit_logistic(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    C: float = 1.0,
    feature_mask: torch.Tensor | None = None,
    n_problems: int | None = None,
    init: torch.Tensor | None = None,
    max_iter: int = 500,
    tol: float = 1e-6,
    history: int = 10,
) -> LogisticFit:
    """K L2-regularised logistic regressions (sklearn's objective, C * sum(log-loss) + |w|^2 / 2).

    X: [n, d] shared by all problems, or [K, n, d]; y: [n] in {0, 1}; feature_mask: [K, d] (True =
    the weight is free, False = held at 0). init: [K, d + 1] starting weights and intercept.
    A column stops when the largest gradient entry of the mean objective is below `tol`, or when an
    iteration lowers the objective by less than 10 machine epsilons (relative), as scipy's L-BFGS does.
    """
    dtype = X.dtype
    n, d = X.shape[-2], X.shape[-1]
    K = X.shape[0] if X.dim() == 3 else (feature_mask.shape[0] if feature_mask is not None else (n_problems or 1))
    mask = torch.ones(K, d, dtype=dtype) if feature_mask is None else feature_mask.to(dtype)
    sign = (2 * y.to(dtype) - 1)[:, None]  # [n, 1]
    lam = 1.0 / (C * n)
    ftol = 10 * torch.finfo(dtype).eps
    forward, backward = _design_products(X)

    def objective(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        W, b = P[:, :d], P[:, d]
        margin = sign * (forward(W) + b)  # [n, K]
        loss = F.softplus(-margin).mean(0) + 0.5 * lam * (W * W).sum(1)
        R = -sign * torch.sigmoid(-margin) / n  # d(mean loss)/dz
        grad = torch.cat([backward(R) * mask + lam * W, R.sum(0)[:, None]], dim=1)
        return loss, grad

    P = torch.zeros(K, d + 1, dtype=dtype) if init is None else init.to(dtype).clone()
    P[:, :d] *= mask
    f, g = objective(P)
    S, Y, rho = [], [], []
    converged = g.abs().amax(1) < tol
    iteration = 0
    for iteration in range(1, max_iter + 1):  # noqa: B007 - reported
        if bool(converged.all()):
            break
        # two-loop recursion, per column
        q = g.clone()
        alphas = []
        for s, yv, r in zip(reversed(S), reversed(Y), reversed(rho), strict=True):
            a = r * (s * q).sum(1)
            q -= a[:, None] * yv
            alphas.append(a)
        if S:
            sy, yy = (S[-1] * Y[-1]).sum(1), (Y[-1] * Y[-1]).sum(1)
            gamma = torch.where((sy > 0) & (yy > 0), sy / yy.clamp_min(1e-30), torch.ones_like(sy))
        else:
            gamma = 1.0 / g.abs().sum(1).clamp_min(1.0)
        direction = gamma[:, None] * q
        for s, yv, r, a in zip(S, Y, rho, reversed(alphas), strict=True):
            beta = r * (yv * direction).sum(1)
            direction += s * (a - beta)[:, None]
        direction = -direction
        slope = (g * direction).sum(1)
        uphill = slope >= 0
        if bool(uphill.any()):  # fall back to steepest descent where the model is not a descent direction
            direction[uphill] = -g[uphill]
            slope = (g * direction).sum(1)
        direction[converged] = 0
        # backtracking (Armijo) line search, per column
        step = torch.ones(K, dtype=dtype)
        accepted = converged.clone()
        f_new, g_new, P_new = f.clone(), g.clone(), P.clone()
        for _ in range(40):
            trial = P + step[:, None] * direction
            f_trial, g_trial = objective(trial)
            ok = ~accepted & (f_trial <= f + 1e-4 * step * slope)
            f_new[ok], g_new[ok], P_new[ok] = f_trial[ok], g_trial[ok], trial[ok]
            accepted |= ok
            if bool(accepted.all()):
                break
            step = torch.where(accepted, step, step * 0.5)
        stuck = ~accepted  # no decrease found: at the precision floor, stop these columns
        s, yv = P_new - P, g_new - g
        sy = (s * yv).sum(1)
        S.append(s)
        Y.append(yv)
        rho.append(torch.where(sy > 1e-20, 1.0 / sy.clamp_min(1e-20), torch.zeros_like(sy)))
        if len(S) > history:
            S.pop(0), Y.pop(0), rho.pop(0)
        # scipy's L-BFGS test too: a relative decrease at the dtype's precision floor ends the column
        flat = (f - f_new) <= ftol * torch.maximum(torch.maximum(f.abs(), f_new.abs()), torch.ones_like(f))
        P, f, g = P_new, f_new, g_new
        converged = converged | stuck | flat | (g.abs().amax(1) < tol)
    return LogisticFit(weights=P[:, :d] * mask, intercept=P[:, d], n_iter=iteration, converged=converged)


def standardize_stats(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (ddof 0) over rows, as StandardScaler; a constant column gets std 1."""
    mean = X.mean(dim=-2, keepdim=True)
    std = X.std(dim=-2, correction=0, keepdim=True)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def stratified_folds(y: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    counts = np.bincount(np.asarray(y, dtype=int), minlength=2)
    if counts.min() < n_folds:
        raise FacesError(
            f"config key faces.probe.folds: {n_folds} folds need at least {n_folds} images per class; "
            f"have {counts[1]} faces and {counts[0]} non-faces"
        )
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def fixed_split(y: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train / held-out indices for the fixed readout."""
    index = np.arange(len(y))
    try:
        train, test = train_test_split(index, train_size=train_fraction, stratify=y, random_state=seed)
    except ValueError as err:
        raise FacesError(f"config key faces.probe.fixed_train_fraction: cannot split {len(y)} images ({err})") from None
    return np.sort(train), np.sort(test)


def cv_correct(
    X: torch.Tensor,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    *,
    C: float,
    feature_mask: torch.Tensor | None = None,
    init: list[torch.Tensor] | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, list[torch.Tensor]]:
    """Correct held-out predictions per problem and fold, [K, n_folds], with the fitted parameters per fold.

    X is [n, d] (shared, with `feature_mask` [K, d]) or [K, n, d]; each fold standardises with its
    training rows' statistics.
    """
    y_tensor = torch.as_tensor(np.asarray(y), dtype=torch.long)
    correct, params = [], []
    n_problems = X.shape[0] if X.dim() == 3 else (1 if feature_mask is None else feature_mask.shape[0])
    bar = tqdm(total=len(folds), desc=f"probes x{n_problems}", unit="fold", disable=not progress, mininterval=2)
    for index, (train, test) in enumerate(folds):
        train_t, test_t = torch.as_tensor(train), torch.as_tensor(test)
        X_train, X_test = X.index_select(-2, train_t), X.index_select(-2, test_t)
        mean, std = standardize_stats(X_train)
        fit = fit_logistic(
            (X_train - mean) / std,
            y_tensor[train_t],
            C=C,
            feature_mask=feature_mask,
            init=None if init is None else init[index],
        )
        decision = _decision((X_test - mean) / std, fit.weights, fit.intercept)  # [n_test, K]
        correct.append(((decision > 0).long() == y_tensor[test_t][:, None]).sum(0).numpy())
        params.append(torch.cat([fit.weights, fit.intercept[:, None]], dim=1))
        bar.update(1)
    bar.close()
    return np.stack(correct, axis=1), params


def _decision(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    forward, _ = _design_products(X)
    return forward(W) + b
