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
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold, train_test_split
from tqdm import tqdm

from unitscope.stats import derived_rng, wilson_interval
from unitscope.studies.faces.inputs import CategoryMeans, FacesError


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
    d = X.shape[-1]
    K = X.shape[0] if X.dim() == 3 else (feature_mask.shape[0] if feature_mask is not None else (n_problems or 1))
    mask = torch.ones(K, d, dtype=dtype) if feature_mask is None else feature_mask.to(dtype)
    ftol = 10 * torch.finfo(dtype).eps
    objective = _objective(X, y, mask, C)
    P = torch.zeros(K, d + 1, dtype=dtype) if init is None else init.to(dtype).clone()
    P[:, :d] *= mask
    f, g = objective(P)
    memory = _History(history)
    converged = g.abs().amax(1) < tol
    iteration = 0
    for iteration in range(1, max_iter + 1):  # noqa: B007 - reported
        if bool(converged.all()):
            break
        direction, slope = memory.direction(g, converged)
        P_new, f_new, g_new, stuck = _backtrack(objective, P, f, g, direction, slope, converged)
        memory.add(P_new - P, g_new - g)
        # scipy's L-BFGS test too: a relative decrease at the dtype's precision floor ends the column
        flat = (f - f_new) <= ftol * torch.maximum(torch.maximum(f.abs(), f_new.abs()), torch.ones_like(f))
        P, f, g = P_new, f_new, g_new
        converged = converged | stuck | flat | (g.abs().amax(1) < tol)
    return LogisticFit(weights=P[:, :d] * mask, intercept=P[:, d], n_iter=iteration, converged=converged)


def _objective(X: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, C: float):
    """P [K, d + 1] -> (mean objective [K], gradient [K, d + 1]); masked weights get no gradient."""
    dtype = X.dtype
    n, d = X.shape[-2], X.shape[-1]
    sign = (2 * y.to(dtype) - 1)[:, None]  # [n, 1]
    lam = 1.0 / (C * n)
    forward, backward = _design_products(X)

    def objective(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        W, b = P[:, :d], P[:, d]
        margin = sign * (forward(W) + b)  # [n, K]
        loss = F.softplus(-margin).mean(0) + 0.5 * lam * (W * W).sum(1)
        R = -sign * torch.sigmoid(-margin) / n  # d(mean loss)/dz
        grad = torch.cat([backward(R) * mask + lam * W, R.sum(0)[:, None]], dim=1)
        return loss, grad

    return objective


class _History:
    """The last `size` L-BFGS steps and gradient changes of every column, and the direction they give."""

    def __init__(self, size: int):
        self.size = size
        self.S: list[torch.Tensor] = []
        self.Y: list[torch.Tensor] = []
        self.rho: list[torch.Tensor] = []

    def add(self, s: torch.Tensor, yv: torch.Tensor) -> None:
        sy = (s * yv).sum(1)
        self.S.append(s)
        self.Y.append(yv)
        self.rho.append(torch.where(sy > 1e-20, 1.0 / sy.clamp_min(1e-20), torch.zeros_like(sy)))
        if len(self.S) > self.size:
            self.S.pop(0), self.Y.pop(0), self.rho.pop(0)

    def direction(self, g: torch.Tensor, converged: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(search direction, its slope g . direction) per column: the two-loop recursion, or steepest
        descent where that is not a descent direction; zero for converged columns."""
        S, Y, rho = self.S, self.Y, self.rho
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
        return direction, slope


def _backtrack(objective, P, f, g, direction, slope, converged):
    """Backtracking (Armijo) line search per column: (P, f, g) after the accepted steps, and the columns for
    which no decrease was found (at the precision floor: they stop)."""
    step = torch.ones(P.shape[0], dtype=P.dtype)
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
    return P_new, f_new, g_new, ~accepted


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


def layer_probe(
    data: CategoryMeans, *, layer: str, depth: int, folds: int, C: float, seed: int
) -> tuple[dict, pd.DataFrame]:
    """Cross-validated face-vs-non-face accuracy on one layer's channel means (95% Wilson interval), and the
    coefficients (standardised units) of the probe fit on every image, per channel."""
    y = data.is_face.astype(int)
    split = stratified_folds(y, folds, int(derived_rng(seed, "faces/folds").integers(2**31)))
    X = torch.as_tensor(data.means, dtype=torch.float64)
    correct, _ = cv_correct(X, y, split, C=C)
    fold_accuracy = correct[0] / np.array([len(test) for _, test in split])
    n_correct = int(correct.sum())
    low, high = wilson_interval(n_correct, len(y))
    mean, std = standardize_stats(X)
    full = fit_logistic((X - mean) / std, torch.as_tensor(y), C=C)
    row = {
        "layer": layer,
        "depth": depth,
        "n_channels": data.n_channels,
        "n_images": len(y),
        "n_faces": int(y.sum()),
        "accuracy": n_correct / len(y),
        "ci_low": low,
        "ci_high": high,
        "fold_accuracy_sd": float(np.std(fold_accuracy, ddof=1)),
        "fold_accuracies": fold_accuracy.tolist(),
        "chance": float(max(y.mean(), 1 - y.mean())),
        "converged": bool(full.converged.all()),
    }
    coefficients = pd.DataFrame(
        {
            "layer": layer,
            "channel": np.arange(data.n_channels),
            "coefficient": full.weights[0].numpy(),
            "intercept": float(full.intercept[0]),
            "feature_mean": mean[0].numpy(),
            "feature_std": std[0].numpy(),
        }
    )
    print(f"probe {layer}: {n_correct}/{len(y)} correct ({n_correct / len(y):.3f}), {folds}-fold CV", flush=True)
    return row, coefficients
