"""DCI: disentanglement, completeness and informativeness of slot codes (Eastwood & Williams, ICLR 2018).

Shape legend: M matched (slot, object) pairs, D latent size (codes), F target factors.

Recipe (as the paper's CLEVR6 numbers were made, with the original's bug fixed):
1. codes = posterior means of the slots matched to ground-truth objects (see `matching.py`);
2. a seeded, shuffled 50/50 train/test split of the pairs;
3. one gradient-boosted-trees model per factor: a classifier for a discrete factor, a regressor for a
   continuous one (the original code overwrote its model-kind variable with the first fitted model, so every
   factor re-used that first model's class — a regressor on CLEVR — and scored regressors by exact equality);
4. importance matrix R [D,F] = |feature_importances_| of each factor's model;
5. disentanglement = Σ_d ρ_d (1 − H_F(P_d·)), P_d· = R_d· / Σ_f R_df, ρ_d = Σ_f R_df / Σ R;
   completeness   = Σ_f ρ_f (1 − H_D(P̃_·f)), P̃_·f = R_·f / Σ_d R_df, ρ_f = Σ_d R_df / Σ R;
   (entropies in base F and D; the weighted averages are those of disentanglement_lib);
6. informativeness (train and test) = mean over factors of the accuracy (discrete) or of max(0, R²) (continuous):
   R² = 1 − MSE / variance of the factor, i.e. one minus the normalised squared error; negative R² (worse than
   predicting the mean) counts as 0 so every factor's score lies in [0, 1]. The raw R² is kept per factor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split

from emorl_cli.data.registry import DATASETS
from emorl_cli.errors import EmorlError

FactorKind = Literal["continuous", "discrete", "visibility"]

__all__ = [
    "Factor",
    "DISCRETE_FACTORS",
    "dataset_factors",
    "target_factors",
    "visibility_column",
    "compute_dci",
    "disentanglement",
    "completeness",
    "disentanglement_per_code",
    "completeness_per_factor",
]


@dataclass(frozen=True)
class Factor:
    """One column of the .h5 `factors [N,O,F]` array."""

    name: str
    kind: FactorKind


# Discrete factors (fit with a classifier) of each dataset; every other column but visibility is continuous.
# Column names and order come from the data registry. Tetrominoes: x = top row, y = left column (integer
# positions, regressed since they are ordinal), a shape id, colour as three 0/1 channels. Multi-dSprites
# (DeepMind's colored_on_grayscale): position, shape (square/ellipse/heart), scale, orientation and an RGB
# colour of three floats. CLEVR: the original's dci_clevr kinds (x, y, z, rotation continuous).
DISCRETE_FACTORS: dict[str, frozenset[str]] = {
    "tetrominoes": frozenset({"shape", "r", "g", "b"}),
    "multi_dsprites": frozenset({"shape"}),
    "clevr6": frozenset({"size", "material", "shape", "colour"}),
    "clevr6_128": frozenset({"size", "material", "shape", "colour"}),
}
VISIBILITY = "visibility"  # marks present objects; no DCI target


def dataset_factors(dataset: str) -> tuple[Factor, ...]:
    """The factor columns of a known dataset's .h5 files, in order, with their kinds."""
    if dataset not in DATASETS or dataset not in DISCRETE_FACTORS:
        known = sorted(set(DATASETS) & set(DISCRETE_FACTORS))
        raise EmorlError(f"no factor description for dataset {dataset!r}; known: {', '.join(known)}")
    discrete = DISCRETE_FACTORS[dataset]
    return tuple(
        Factor(name, "visibility" if name == VISIBILITY else "discrete" if name in discrete else "continuous")
        for name in DATASETS[dataset].factor_names
    )


def target_factors(factors: Sequence[Factor]) -> tuple[list[int], list[FactorKind], list[str]]:
    """Columns that DCI predicts (all but visibility): (indices, kinds, names)."""
    picked = [(i, f) for i, f in enumerate(factors) if f.kind != "visibility"]
    return [i for i, _ in picked], [f.kind for _, f in picked], [f.name for _, f in picked]


def visibility_column(factors: Sequence[Factor]) -> int | None:
    """Index of the visibility column, or None."""
    return next((i for i, f in enumerate(factors) if f.kind == "visibility"), None)


# ------------------------------------------------------------------------------------ importance → scores


def _normalised_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """Entropy of the distributions p/Σp along `axis`, in base p.shape[axis] (so in [0, 1]); 0 for an empty row."""
    size = p.shape[axis]
    total = p.sum(axis=axis, keepdims=True)
    q = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    terms = np.where(q > 0, -q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    entropy = terms.sum(axis=axis)
    return entropy / math.log(size) if size > 1 else np.zeros_like(entropy)


def _check_importance(importance: np.ndarray) -> np.ndarray:
    importance = np.abs(np.asarray(importance, dtype=np.float64))
    if importance.ndim != 2:
        raise EmorlError(f"importance matrix must be [codes, factors], got shape {list(importance.shape)}")
    return importance


def disentanglement_per_code(importance: np.ndarray) -> np.ndarray:
    """1 − H_F of each code's importance over factors [D] (0 for a code of no importance)."""
    importance = _check_importance(importance)
    score = 1.0 - _normalised_entropy(importance, axis=1)
    return np.where(importance.sum(axis=1) > 0, score, 0.0)


def completeness_per_factor(importance: np.ndarray) -> np.ndarray:
    """1 − H_D of each factor's importance over codes [F] (0 for a factor no code explains)."""
    importance = _check_importance(importance)
    score = 1.0 - _normalised_entropy(importance, axis=0)
    return np.where(importance.sum(axis=0) > 0, score, 0.0)


def disentanglement(importance: np.ndarray) -> float:
    """Importance-weighted mean of the per-code disentanglement; 0 when R is all zeros."""
    importance = _check_importance(importance)
    total = importance.sum()
    if total == 0:
        return 0.0
    return float(np.sum(disentanglement_per_code(importance) * importance.sum(axis=1) / total))


def completeness(importance: np.ndarray) -> float:
    """Importance-weighted mean of the per-factor completeness; 0 when R is all zeros."""
    importance = _check_importance(importance)
    total = importance.sum()
    if total == 0:
        return 0.0
    return float(np.sum(completeness_per_factor(importance) * importance.sum(axis=0) / total))


# -------------------------------------------------------------------------------------------------- DCI


def _fit_factor(
    kind: FactorKind,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    seed: int,
    gbt_kwargs: dict[str, Any],
) -> tuple[np.ndarray, float, float]:
    """Fit one factor's model → (importance [D], train score, test score), raw (accuracy or R²)."""
    if kind == "discrete":
        if np.unique(y_train).size < 2:  # a constant factor: nothing to learn, predict the constant
            constant = y_train[0] if y_train.size else np.nan
            return (
                np.zeros(x_train.shape[1]),
                accuracy_score(y_train, np.full_like(y_train, constant)),
                accuracy_score(y_test, np.full_like(y_test, constant)),
            )
        model = GradientBoostingClassifier(random_state=seed, **gbt_kwargs)
        score = accuracy_score
    elif kind == "continuous":
        model = GradientBoostingRegressor(random_state=seed, **gbt_kwargs)
        score = _r2
    else:
        raise EmorlError(f"factor kind must be 'discrete' or 'continuous', got {kind!r}")
    model.fit(x_train, y_train)
    importance = np.abs(model.feature_importances_)
    return importance, float(score(y_train, model.predict(x_train))), float(score(y_test, model.predict(x_test)))


def _r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """R²; 1 for a constant target predicted exactly, 0 for a constant target missed."""
    if np.ptp(y_true) == 0:
        return 1.0 if np.allclose(y_pred, y_true) else 0.0
    return float(r2_score(y_true, y_pred))


def _informativeness(kind: FactorKind, raw: float) -> float:
    return raw if kind == "discrete" else max(0.0, raw)


def compute_dci(
    codes: np.ndarray,
    factors: np.ndarray,
    kinds: Sequence[FactorKind],
    *,
    seed: int = 0,
    names: Sequence[str] | None = None,
    test_size: float = 0.5,
    n_estimators: int = 100,
    **gbt_kwargs: Any,
) -> dict[str, Any]:
    """Disentanglement, completeness and informativeness of codes w.r.t. ground-truth factors.

    Args:
        codes: [M,D] one row per matched slot (posterior means).
        factors: [M,F] the matched objects' factors (targets only; drop visibility first, see `target_factors`).
        kinds: F entries, 'discrete' (classifier, accuracy) or 'continuous' (regressor, R²).
        seed: seeds the train/test split and the boosted trees.
        names: F factor names for the per-factor report (default f0, f1, …).
        test_size: share of the pairs held out (the paper: 0.5).
        n_estimators, **gbt_kwargs: passed to scikit-learn's GradientBoosting{Classifier,Regressor}
            (defaults: scikit-learn's, 100 trees of depth 3 — what the paper used).
    Returns:
        {"disentanglement", "completeness", "informativeness_train", "informativeness_test",
         "num_train", "num_test", "importance" [D][F] (list of lists),
         "per_factor": [{"name", "kind", "train", "test", "completeness"}] with raw accuracy / R²,
         "per_code_disentanglement" [D]}.
    """
    codes = np.asarray(codes, dtype=np.float64)
    factors = np.asarray(factors, dtype=np.float64)
    kinds = list(kinds)
    if codes.ndim != 2 or factors.ndim != 2 or codes.shape[0] != factors.shape[0]:
        raise EmorlError(
            f"codes must be [M,D] and factors [M,F] with the same M, got {list(codes.shape)} and {list(factors.shape)}"
        )
    if len(kinds) != factors.shape[1]:
        raise EmorlError(f"{factors.shape[1]} factor columns but {len(kinds)} kinds; give one kind per column")
    names = list(names) if names is not None else [f"f{i}" for i in range(len(kinds))]
    if codes.shape[0] < 4:
        raise EmorlError(
            f"DCI needs matched slot/object pairs to train and test on, got {codes.shape[0]}; "
            "evaluate more images (or check that slots match objects: IoU ≥ 0.1, objects ≥ 50 px)"
        )
    x_train, x_test, y_train, y_test = train_test_split(
        codes, factors, test_size=test_size, random_state=seed, shuffle=True
    )
    importance = np.zeros((codes.shape[1], factors.shape[1]))
    per_factor = []
    for f, kind in enumerate(kinds):
        importance[:, f], train, test = _fit_factor(
            kind, x_train, y_train[:, f], x_test, y_test[:, f], seed, {"n_estimators": n_estimators, **gbt_kwargs}
        )
        per_factor.append({"name": names[f], "kind": kind, "train": train, "test": test})
    for entry, c in zip(per_factor, completeness_per_factor(importance), strict=True):
        entry["completeness"] = float(c)
    return {
        "disentanglement": disentanglement(importance),
        "completeness": completeness(importance),
        "informativeness_train": float(np.mean([_informativeness(e["kind"], e["train"]) for e in per_factor])),
        "informativeness_test": float(np.mean([_informativeness(e["kind"], e["test"]) for e in per_factor])),
        "num_train": int(x_train.shape[0]),
        "num_test": int(x_test.shape[0]),
        "importance": importance.tolist(),
        "per_factor": per_factor,
        "per_code_disentanglement": disentanglement_per_code(importance).tolist(),
    }
