"""The study report, rebuilt from disk: ``report.md``, PNG figures and ``summary.json`` in a study folder.

A study folder ``runs/<name>/`` holds ``study.json`` (settings, budget, the list of runs and their status),
``corruptions.json`` (measured frequency character and low/high grouping), ``images.json`` (the images'
spectrum) and one folder per run, ``<arm>/seed<k>/``, whose ``eval.json`` holds that model's results (see
:func:`jafr_kernels.eval.study.evaluate_model`). :func:`build_report` reads only these files, so a report
can be regenerated without retraining.

Every number of a table is the mean over seeds with a 95 % t interval; every verdict on the paper's claims is
decided on paired per-seed differences (:mod:`jafr_kernels.eval.stats`).
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Optional

import numpy as np

from jafr_kernels.eval import stats
from jafr_kernels.train.methods import claims, parse

FIGURES = ("jacobian_spectra.png", "radial_profiles.png", "fourier_heatmaps.png", "corruption_accuracy.png",
           "accuracy_vs_eps.png", "corruption_frequency.png", "verdicts.png")
TRADEOFF_FIGURES = {"lam": "tradeoff_lambda.png", "cutoff": "tradeoff_cutoff.png"}

# The headline metrics: key, column title, scale for display (100: a percentage).
METRICS = (
    ("clean", "clean", 100), ("corruption_low", "low-freq corr.", 100), ("corruption_high", "high-freq corr.", 100),
    ("corruption_all", "all corr.", 100), ("fgsm", "FGSM", 100), ("pgd_ce", "PGD-CE", 100), ("pgd_cw", "PGD-CW", 100),
    ("pgd_claim", "PGD-CE claim ε", 100),
    ("jacobian_low_freq_ratio", "J low-freq ratio", 1), ("heat_map_error", "Fourier map mean error", 1),
)
FLOOR = 0.01  # a claim whose every value lies below 1 % accuracy cannot show a difference: the report says so
TRADEOFF_METRICS = (
    ("jacobian_low_freq_ratio", "J low-freq ratio", 1), ("clean", "clean (%)", 100),
    ("corruption_low", "low-freq corruptions (%)", 100), ("corruption_high", "high-freq corruptions (%)", 100),
    ("pgd_ce", "PGD-CE (%)", 100), ("pgd_claim", "PGD-CE claim ε (%)", 100),
)
# Image-sampling (binomial) half-widths shown beside the seed intervals: (metric, title).
BINOMIAL_METRICS = (("clean", "clean"), ("corruption_low", "low-freq corr."), ("corruption_high", "high-freq corr."),
                    ("pgd_claim", "PGD-CE claim ε"))


def _load(path: str):
    with open(path) as f:
        return json.load(f)


def load_study(root: str) -> dict:
    """Read a study folder: ``{"study", "corruptions", "images", "runs": [run record + "eval"], "failed": [...]}``."""
    study = _load(os.path.join(root, "study.json"))
    runs, failed = [], []
    for rec in study["runs"]:
        path = os.path.join(root, rec["folder"], "eval.json")
        if rec.get("status") == "failed":
            failed.append(rec)
        elif os.path.exists(path):
            runs.append(dict(rec, eval=_load(path)))
    images_path = os.path.join(root, "images.json")
    return {
        "study": study,
        "corruptions": _load(os.path.join(root, "corruptions.json")),
        "images": _load(images_path) if os.path.exists(images_path) else None,
        "runs": runs,
        "failed": failed,
    }


def _mean(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def group_accuracy(ev: dict, names: list[str]) -> float:
    """Mean over ``names`` of the per-corruption accuracy averaged over severities."""
    return _mean([ev["corruptions"][n]["mean"] for n in names if n in ev["corruptions"]])


def claim_eps_key(study: dict) -> str:
    """The radius of the adversarial claims (a study made before it existed: the study ε)."""
    return study.get("claim_eps_key", study["eps_key"])


def run_metrics(ev: dict, groups: dict, eps_key: str, cutoff: float, claim_key: str | None = None) -> dict:
    """Headline numbers of one evaluated run: clean, low/high-frequency corruption means, FGSM/PGD at the study
    eps, PGD at the claim radius ``claim_key`` (default: the study eps), J's low-frequency ratio at ``cutoff``
    and the Fourier heat map's mean error."""
    adv, jac = ev["adversarial"], ev["jacobian"]
    ratio = jac.get("ratio_by_cutoff", {}).get(f"{float(cutoff):g}", jac["low_freq_ratio"])
    out = {
        "clean": ev["clean"],
        "corruption_low": group_accuracy(ev, groups["low"]),
        "corruption_high": group_accuracy(ev, groups["high"]),
        "corruption_all": group_accuracy(ev, groups["low"] + groups["high"]),
        "fgsm": adv.get("fgsm", {}).get(eps_key),
        "pgd_ce": adv.get("pgd_ce", {}).get(eps_key),
        "pgd_cw": adv.get("pgd_cw", {}).get(eps_key),
        "pgd_claim": adv.get("pgd_ce", {}).get(claim_key or eps_key),
        "jacobian_low_freq_ratio": ratio,
        "heat_map_error": float(np.mean(ev["heat_map"]["error"])),
    }
    if "autoattack" in ev:
        out["autoattack"] = ev["autoattack"]
    return out


def arm_key(rec: dict) -> tuple:
    """(label, λ, cutoff) of a run record; λ and cutoff are None for methods without JaFR."""
    return rec["label"], rec.get("lam"), rec.get("cutoff")


def arms(data: dict, cutoff_of_ratio=None) -> dict:
    """``{(label, λ, cutoff): {seed: run_metrics}}``; J's ratio at the study cutoff, or at each run's own cutoff
    when ``cutoff_of_ratio="own"`` (baselines are then measured at every cutoff; see :func:`tradeoff_rows`)."""
    study, groups = data["study"], data["corruptions"]["groups"]
    out: dict = {}
    for run in data["runs"]:
        cut = study["primary_cutoff"] if cutoff_of_ratio is None else cutoff_of_ratio
        metrics = run_metrics(run["eval"], groups, study["eps_key"], cut, claim_eps_key(study))
        out.setdefault(arm_key(run), {})[run["seed"]] = metrics
    return out


def primary_key(study: dict, label: str) -> tuple:
    """The arm shown for ``label`` in the headline and verdict tables (the study's primary λ and cutoff)."""
    if parse(label).info.jafr:
        return label, study["primary_lam"], study["primary_cutoff"]
    return label, None, None


def interval(per_seed: dict, metric: str) -> stats.Interval:
    return stats.mean_ci([m.get(metric) for m in per_seed.values()])


def summarise(data: dict) -> dict:
    """Per label at the primary setting: ``{metric: {"mean", "ci", "n", "per_seed"}}`` (JSON-ready)."""
    table = arms(data)
    out = {}
    for label in data["study"]["labels"]:
        per_seed = table.get(primary_key(data["study"], label))
        if not per_seed:
            continue
        row = {}
        for key in [m[0] for m in METRICS] + (["autoattack"] if any("autoattack" in v for v in per_seed.values()) else []):
            iv = interval(per_seed, key)
            row[key] = {"mean": iv.mean, "ci": iv.half_width, "n": iv.n,
                        "per_seed": {str(s): v.get(key) for s, v in sorted(per_seed.items())}}
        out[label] = row
    return out


def verdicts(data: dict) -> list[dict]:
    """Every claim of :func:`jafr_kernels.train.methods.claims` the study can check, decided on paired seeds."""
    study = data["study"]
    table = arms(data)
    rows = []
    for claim in claims(study["labels"]):
        method = table.get(primary_key(study, claim.label), {})
        base = table.get(primary_key(study, claim.baseline), {})
        if not method or not base:
            continue
        v = stats.paired_verdict({s: m.get(claim.metric) for s, m in method.items()},
                                 {s: m.get(claim.metric) for s, m in base.items()}, claim.expected)
        diffs = [method[s][claim.metric] - base[s][claim.metric] for s in v.seeds]
        values = [m[claim.metric] for arm in (method, base) for s, m in arm.items() if s in v.seeds]
        rows.append({"label": claim.label, "baseline": claim.baseline, "metric": claim.metric,
                     "what": claim.what.format(claim_eps=claim_eps_key(study)),
                     "expected": claim.expected, "mean": v.diff.mean, "ci": v.diff.half_width, "n": v.diff.n,
                     "per_seed": diffs, "verdict": v.verdict, "floor": bool(values) and max(values) < FLOOR})
    return rows


# --------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str) -> None:
    """Write a figure as PNG and free it (figures are made in batches; pyplot would keep them all)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _extent(h: int, w: int):
    # centred maps: index i holds frequency i - H//2 (cycles per image)
    return (-(w // 2) - 0.5, w - w // 2 - 0.5, h - h // 2 - 0.5, -(h // 2) - 0.5)


def _grid(n: int, max_cols: int = 4):
    cols = max(1, min(n, max_cols))
    return (n + cols - 1) // cols, cols


def _err(iv: stats.Interval, scale: float = 1.0) -> float:
    return 0.0 if iv.half_width is None else scale * iv.half_width


def _bounded_err(ivs: list, scale: float) -> np.ndarray:
    """(2, n) error bars of intervals of a quantity in [0, 1] shown times ``scale``, cut at 0 and ``scale``: with
    few seeds a t interval can reach past what the quantity can take (an accuracy above 100 %)."""
    mean = np.asarray([scale * iv.mean for iv in ivs])
    half = np.asarray([_err(iv, scale) for iv in ivs])
    return np.stack([np.minimum(half, mean), np.minimum(half, scale - mean)])


def _primary_runs(data: dict) -> dict:
    """``{label: [eval dicts of its primary arm, one per seed]}`` in study order."""
    study = data["study"]
    out = {}
    for label in study["labels"]:
        key = primary_key(study, label)
        evs = [r["eval"] for r in data["runs"] if arm_key(r) == key]
        if evs:
            out[label] = evs
    return out


def _ci_text(values, digits=3) -> str:
    iv = stats.mean_ci(values)
    return stats.format_interval(iv, scale=1, digits=digits)


def plot_spectra(data: dict, path: str) -> None:
    """Centred mean |FFT| of the images and of each model's Jacobian (mean over seeds), on one colour scale."""
    panels = []
    if data["images"] is not None:
        panels.append(("images", np.asarray(data["images"]["spectrum"]), f"{data['images']['low_freq_ratio']:.3f}"))
    for label, evs in _primary_runs(data).items():
        spec = np.mean([np.asarray(e["jacobian"]["spectrum"]) for e in evs], axis=0)
        panels.append((f"J: {label}", spec, _ci_text([e["jacobian"]["low_freq_ratio"] for e in evs])))
    spectra_figure(panels, path, "Mean magnitude spectrum, centred (DC in the middle); Jacobians averaged over seeds")


def spectra_figure(panels: list, path: str, title: str, decades: float = 4.0) -> None:
    """Centred spectra ``(title, (H, W) array, low-freq ratio text)`` side by side, each as log10 of its share of
    its own sum (J's scale differs by orders between models; the shares compare their shapes), all panels on
    one colour scale spanning ``decades`` below the largest share."""
    plt = _plt()
    logs = [np.log10(spec / max(float(spec.sum()), 1e-300) + 1e-300) for _, spec, _ in panels]
    vmax = max(float(img.max()) for img in logs)
    vmin = max(min(float(img.min()) for img in logs), vmax - decades)
    rows, cols = _grid(len(panels), 3)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, spec, ratio), img in zip(axes.flat, panels, logs):
        h, w = spec.shape
        im = ax.imshow(img, extent=_extent(h, w), cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(f"{name}\nlow-freq ratio {ratio}", fontsize=10)
        ax.set_xlabel("horizontal frequency (cycles/image)")
        ax.set_ylabel("vertical frequency (cycles/image)")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="log10 share of sum |F| (same scale)")
    fig.suptitle(title)
    _save(plt, fig, path)


def plot_radial(data: dict, path: str) -> None:
    """Radial profiles of the Jacobian spectra (mean over seeds, band: lowest to highest seed), unit sum."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if data["images"] is not None:
        prof = data["images"]["radial"]
        v = np.asarray(prof["value"])
        ax.semilogy(prof["radius"], v / v.sum(), "k--", marker="o", ms=3, label="images")
    for label, evs in _primary_runs(data).items():
        radius = evs[0]["jacobian"]["radial"]["radius"]
        curves = np.asarray([np.asarray(e["jacobian"]["radial"]["value"]) / np.sum(e["jacobian"]["radial"]["value"]) for e in evs])
        line = ax.semilogy(radius, curves.mean(axis=0), "-", marker="o", ms=3, label=f"{label} ({len(evs)} seeds)")
        if len(evs) > 1:
            ax.fill_between(radius, curves.min(axis=0), curves.max(axis=0), color=line[0].get_color(), alpha=0.2)
    ax.axvline(data["study"]["primary_cutoff"], color="grey", lw=0.8, ls=":", label=f"cutoff {data['study']['primary_cutoff']:g}")
    ax.set_xlabel("normalised radius r (1 = Nyquist)")
    ax.set_ylabel("mean |F| in ring (normalised)")
    ax.set_title("Radial profile of the Jacobian spectrum (band: range over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


def plot_heat_maps(data: dict, path: str) -> None:
    """Fourier heat maps (error rate per basis frequency, mean over seeds), centred, shared colour scale."""
    plt = _plt()
    runs = list(_primary_runs(data).items())
    rows, cols = _grid(len(runs), 3)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.axis("off")
    for ax, (label, evs) in zip(axes.flat, runs):
        err = np.mean([np.asarray(e["heat_map"]["error"]) for e in evs], axis=0)
        h, w = err.shape
        im = ax.imshow(err, extent=_extent(h, w), cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"{label}\nmean error {_ci_text([float(np.mean(e['heat_map']['error'])) for e in evs], 2)}", fontsize=10)
        ax.set_xlabel("horizontal frequency (cycles/image)")
        ax.set_ylabel("vertical frequency (cycles/image)")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="error rate")
    eps = runs[0][1][0]["heat_map"]["eps"] if runs else float("nan")
    fig.suptitle(f"Fourier heat maps: error under one Fourier basis of L2 norm {eps:.2f}, centred, mean over seeds")
    _save(plt, fig, path)


def plot_corruptions(data: dict, path: str) -> None:
    """Accuracy per corruption (mean over severities; bars: mean over seeds, whiskers: 95 % CI)."""
    plt = _plt()
    groups = data["corruptions"]["groups"]
    names = groups["low"] + groups["high"]
    runs = list(_primary_runs(data).items())
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(names) + 2), 4.8))
    x = np.arange(len(names))
    for i, (label, evs) in enumerate(runs):
        ivs = [stats.mean_ci([e["corruptions"][n]["mean"] for e in evs]) for n in names]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, [100 * iv.mean for iv in ivs], width, label=label,
               yerr=[_err(iv, 100) for iv in ivs], capsize=1.5, error_kw={"lw": 0.8})
    if groups["low"] and groups["high"]:
        ax.axvline(len(groups["low"]) - 0.5, color="k", lw=1)
    ax.text((len(groups["low"]) - 1) / 2, 102, "low-frequency", ha="center", fontsize=9)
    ax.text(len(groups["low"]) + (len(groups["high"]) - 1) / 2, 102, "high-frequency", ha="center", fontsize=9)
    ax.set_ylim(0, 108)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%), mean over severities")
    ax.set_xlabel("corruption")
    ax.set_title("Corruption accuracy by measured frequency group (whiskers: 95 % CI over seeds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="method")
    ax.grid(axis="y", alpha=0.3)
    _save(plt, fig, path)


def plot_eps(data: dict, path: str) -> None:
    """PGD (CE) accuracy against the L-inf radius, clean accuracy at eps = 0; error bars: 95 % CI over seeds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    keys = data["study"]["adversarial"]["eps_keys"]
    eps = [0.0] + [float(k) for k in keys]
    for label, evs in _primary_runs(data).items():
        ivs = [stats.mean_ci([e["clean"] for e in evs])]
        ivs += [stats.mean_ci([e["adversarial"]["pgd_ce"].get(k) for e in evs]) for k in keys]
        ax.errorbar(eps, [100 * iv.mean for iv in ivs], yerr=_bounded_err(ivs, 100), marker="o", capsize=3, label=label)
    adv = data["study"]["adversarial"]
    ax.set_xlabel("L-inf radius eps (pixel scale [0, 1])")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(f"PGD-{adv['steps']} x {adv['restarts']} restart(s) (CE), step eps/4; 95 % CI over seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


def plot_corruption_frequency(data: dict, path: str) -> None:
    """Measured low-frequency ratio of (corrupted - clean) per corruption (bar: mean over severities, dots: each)."""
    plt = _plt()
    char = data["corruptions"]["character"]
    names = sorted(char, key=lambda n: char[n]["mean"])
    fig, ax = plt.subplots(figsize=(max(7, 0.6 * len(names) + 2), 4.2))
    vals = [char[n]["mean"] for n in names]
    thr = data["corruptions"]["threshold"]
    ax.bar(range(len(names)), vals, color=["tab:blue" if v > thr else "tab:orange" for v in vals])
    for i, n in enumerate(names):
        sev = [v for k, v in char[n].items() if k != "mean"]
        ax.plot([i] * len(sev), sev, "k.", ms=3)
    ax.axhline(thr, color="k", ls="--", lw=1, label=f"threshold {thr}")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"low-freq ratio (r <= {data['corruptions']['cutoff']:g}) of difference")
    ax.set_xlabel("corruption (blue: low-frequency group, orange: high-frequency group; dots: severities)")
    ax.set_ylim(0, 1)
    ax.set_title("Frequency character of each corruption (mean over severities)")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


_VERDICT_COLOURS = {stats.AGREES: "tab:green", stats.DISAGREES: "tab:red", stats.WITHIN_NOISE: "tab:gray",
                    stats.NO_INTERVAL: "tab:gray"}


def plot_verdicts(rows: list[dict], path: str) -> None:
    """Forest plot of the checked claims: mean paired difference (points), 95 % CI (bars), each seed (dots)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * max(3, len(rows)) + 1.4))
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        colour = _VERDICT_COLOURS[r["verdict"]]
        ax.plot([100 * d for d in r["per_seed"]], [y] * len(r["per_seed"]), ".", color=colour, alpha=0.5, ms=6)
        xerr = None if r["ci"] is None else [[100 * r["ci"]], [100 * r["ci"]]]
        ax.errorbar([100 * r["mean"]], [y], xerr=xerr, fmt="o", color=colour, capsize=4)
        arrow = "expects +" if r["expected"] > 0 else "expects −"
        ax.text(1.01, y, f"{r['verdict']} ({arrow})", transform=ax.get_yaxis_transform(), va="center", fontsize=8, color=colour)
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['label']} − {r['baseline']}: {r['what']}" for r in reversed(rows)], fontsize=8)
    ax.set_xlabel("difference, percentage points (method − baseline, same seed)")
    ax.set_title("The paper's claims: paired differences, mean and 95 % CI over seeds")
    ax.grid(axis="x", alpha=0.3)
    _save(plt, fig, path)


def tradeoff_rows(data: dict, axis: str) -> dict:
    """Trade-off data along ``axis`` ("lam" or "cutoff"), the other fixed at the study's primary value.

    Returns ``{label: {"values": [x...], "arms": [{seed: metrics}...], "baseline": label,
    "baseline_arms": [{seed: metrics}...]}}``; J's ratio is measured at each run's own cutoff, and the
    baseline's at the same cutoff (so along ``cutoff`` the baseline varies too).
    """
    study = data["study"]
    values = study["lams"] if axis == "lam" else study["cutoffs"]
    out = {}
    for label in study["labels"]:
        spec = parse(label)
        if not spec.info.jafr:
            continue
        base = spec.baseline.label if spec.baseline is not None and spec.baseline.label in study["labels"] else None
        entry = {"values": [], "arms": [], "baseline": base, "baseline_arms": []}
        for v in values:
            lam = v if axis == "lam" else study["primary_lam"]
            cut = v if axis == "cutoff" else study["primary_cutoff"]
            table = arms(data, cutoff_of_ratio=cut)
            per_seed = table.get((label, lam, cut))
            if not per_seed:
                continue
            entry["values"].append(v)
            entry["arms"].append(per_seed)
            entry["baseline_arms"].append(table.get((base, None, None), {}) if base else {})
        if entry["values"]:
            out[label] = entry
    return out


def plot_tradeoff(rows: dict, axis: str, path: str) -> None:
    """One panel per trade-off metric against λ (log axis) or the cutoff; lines per JaFR label with 95 % CI
    error bars; each baseline as a dashed line with its CI band."""
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, (key, title, scale) in zip(axes.flat, TRADEOFF_METRICS):
        drawn = set()
        for label, entry in rows.items():
            xs = entry["values"]
            ivs = [interval(a, key) for a in entry["arms"]]
            ax.errorbar(xs, [scale * iv.mean for iv in ivs], yerr=_bounded_err(ivs, scale), marker="o", capsize=3,
                        label=label)
            base = entry["baseline"]
            if base and (base, key) not in drawn and any(entry["baseline_arms"]):
                drawn.add((base, key))
                bivs = [interval(a, key) for a in entry["baseline_arms"]]
                mean = np.asarray([scale * iv.mean for iv in bivs])
                below, above = _bounded_err(bivs, scale)
                line = ax.plot(xs, mean, "--", color="0.35", lw=1.2, label=f"{base} (baseline)")
                ax.fill_between(xs, mean - below, mean + above, color=line[0].get_color(), alpha=0.15)
        if axis == "lam" and all(x > 0 for entry in rows.values() for x in entry["values"]):
            ax.set_xscale("log")
        ax.set_xlabel("λ" if axis == "lam" else "cutoff (normalised radius)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    legend_ax = axes.flat[-1]
    legend_ax.axis("off")
    legend_ax.legend(handles, labels, loc="center", fontsize=9, title="method")
    what = "λ" if axis == "lam" else "cutoff"
    fig.suptitle(f"Trade-off against {what} (mean and 95 % CI over seeds, cut at the range of each measure; dashed: baseline without JaFR, band: its CI)")
    _save(plt, fig, path)


# --------------------------------------------------------------------------- markdown
def image_half_widths(data: dict) -> dict:
    """``{metric: half-width}`` of :data:`BINOMIAL_METRICS`: the image-sampling part of each accuracy
    (:func:`jafr_kernels.eval.stats.binomial_half_width` on the evaluated images; for a corruption group the
    mean over its corruptions and severities), the largest over the primary runs. The seeds share their test
    images, so the seed intervals leave it out; paired differences on the same images cancel most of it."""
    study, groups = data["study"], data["corruptions"]["groups"]
    claim = claim_eps_key(study)
    out = {}
    for evs in _primary_runs(data).values():
        for ev in evs:
            adv = ev["adversarial"]
            accs = {"clean": [ev["clean"]], "pgd_claim": [adv.get("pgd_ce", {}).get(claim)]}
            for key, group in (("corruption_low", "low"), ("corruption_high", "high")):
                accs[key] = [v for n in groups[group] if n in ev["corruptions"]
                             for s, v in ev["corruptions"][n].items() if s != "mean"]
            for key, values in accs.items():
                n = adv["n"] if key == "pgd_claim" else ev["n"]
                if any(v is not None for v in values):
                    out[key] = max(out.get(key, 0.0), stats.binomial_half_width(values, n))
    return out


def _claim_text(r: dict) -> str:
    diff = stats.format_interval(stats.Interval(r["mean"], r["ci"], r["n"]), signed=True)
    return f"{r['label']} vs {r['baseline']} on {r['what']}: {diff} pp"


def conclusions(data: dict, summary: dict, rows: list[dict]) -> list[str]:
    """The report's opening: which of the paper's claims the study supports, contradicts, leaves undecided and
    cannot test at its budget, how well the baseline trained, and at which radius the PGD claims are judged."""
    study = data["study"]
    floor = [r for r in rows if r.get("floor")]
    groups = {
        "Supported (the 95 % interval of the paired difference excludes 0, with the paper's sign)":
            [r for r in rows if r["verdict"] == stats.AGREES and not r.get("floor")],
        "Contradicted (the interval excludes 0, with the opposite sign)":
            [r for r in rows if r["verdict"] == stats.DISAGREES and not r.get("floor")],
        "Not decided at this budget (the interval includes 0)":
            [r for r in rows if r["verdict"] in (stats.WITHIN_NOISE, stats.NO_INTERVAL) and not r.get("floor")],
        "Not testable here (every value below 1 %: the measure is at its floor)": floor,
    }
    lines = ["## What this study shows", "",
             f"Budget: {study['budget_text']}; {len(rows)} of the paper's claims checked."]
    base = summary.get("standard")
    if base:
        clean = stats.Interval(base["clean"]["mean"], base["clean"]["ci"], base["clean"]["n"])
        lines[-1] += f" The standard model reaches {_cell(clean, 100)} % clean accuracy (mean ± 95 % CI over seeds)."
    lines.append("")
    for title, members in groups.items():
        if members:
            lines.append(f"* **{title}:** " + "; ".join(_claim_text(r) for r in members) + ".")
    clean_models = [label for label in summary if parse(label).info.attack is None]
    claim, eps = claim_eps_key(study), study["eps_key"]
    if clean_models and claim != eps:
        at = {k: max(summary[label][k]["mean"] for label in clean_models) for k in ("pgd_claim", "pgd_ce")}
        room = "so a difference can show" if at["pgd_claim"] >= FLOOR else "still at the floor"
        lines.append(f"* Adversarial claims are judged by PGD-CE at ε = {claim}, a fraction of the training ε = {eps}:"
                     f" there the models without adversarial training keep up to {100 * at['pgd_claim']:.1f} % accuracy,"
                     f" {room}; at ε = {eps} they keep at most {100 * at['pgd_ce']:.1f} %.")
    lines.append("")
    return lines


def _cell(iv: stats.Interval, scale: float) -> str:
    return stats.format_interval(iv, scale=scale, digits=1 if scale == 100 else 3)


def _formulation_text(study: dict) -> str:
    t = study["train"]
    mode = t["jacobian_mode"].replace("_", " ") + (f" (h = {t['fd_h']:g})" if t["jacobian_mode"] == "finite_difference" else "")
    if study["formulation"] == "official":
        what = ("the **official** formulation (the authors' score: log-sum-exp over rows and columns of the batch-mean"
                " |F J| raised to a linear exponent ramp; it has no cutoff)")
        values = f"λ = {_list(study['lams'])}"
    else:
        what = ("the **ratio** formulation (per sample, the share of |F J|² outside the low band r ≤ cutoff for target"
                " low, inside it for target high)")
        values = f"λ = {_list(study['lams'])}, cutoff = {_list(study['cutoffs'])}"
    return f"{what}, {values}; J's parameter gradient by {mode}"


def _title(title: str, study: dict) -> str:
    """A column title with the claim radius written out ("PGD-CE claim ε" -> "PGD-CE ε=0.0250")."""
    return title.replace("claim ε", f"ε={claim_eps_key(study)}")


def _list(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _training_text(study: dict) -> str:
    t = study["train"]
    parts = [f"batch {t['batch_size']}", f"SGD lr {t['lr']:g} ({t['lr_schedule']})", f"momentum {t['momentum']:g}",
             f"weight decay {t['weight_decay']:g}", f"ε = {t['eps']:.4g}", "augmentation " + ("on" if t["augment"] else "off"),
             t["dtype"] + (" with bf16 autocast" if t["bf16"] else ""),
             "BN statistics " + ("frozen in the extra passes" if t["freeze_bn"] else "updated by every pass")]
    if t.get("max_steps"):
        parts.append(f"at most {t['max_steps']} steps")
    if t.get("train_subset"):
        parts.append(f"first {t['train_subset']} training images")
    methods = [parse(m).info for m in study["methods"]]
    if any(m.gradalign for m in methods):
        parts.append(f"GradAlign λ {t['gradalign_lambda']:g}")
    if any(m.attack == "pgd" for m in methods):
        parts.append(f"training PGD-{t['pgd_steps']}")
    return ", ".join(parts)


MIN_SEEDS = 3  # with 2 seeds a 95 % t interval spans 12.7 standard errors each side: nothing small is decidable


def seeds_warning(n_seeds: int, rows: list[dict]) -> Optional[str]:
    """One line when the study has too few seeds to decide its claims (fewer than MIN_SEEDS, or none decided), else None."""
    decided = any(r["verdict"] in (stats.AGREES, stats.DISAGREES) for r in rows)
    if n_seeds >= MIN_SEEDS and (decided or not rows):
        return None
    if n_seeds < 2:
        why = "With one seed there is no interval, so no verdict"
    elif n_seeds < MIN_SEEDS:
        why = (f"With {n_seeds} seeds a 95 % interval reaches {stats.t_quantile(n_seeds - 1):.1f} standard errors either side"
               " of the mean, so only huge differences can be decided")
    else:
        why = f"With {n_seeds} seeds no claim was decided: every difference is within noise"
    return f"{why}: rerun with `--seeds {max(MIN_SEEDS, n_seeds + 2)}` (finished runs are reused)."


def _verdict_cell(r: dict) -> str:
    if r["verdict"] == stats.DISAGREES:
        text = "**disagrees**"
    elif r["verdict"] == stats.WITHIN_NOISE:
        text = f"within noise (CI [{100 * (r['mean'] - r['ci']):+.1f}, {100 * (r['mean'] + r['ci']):+.1f}] pp)"
    else:
        text = r["verdict"]
    return text + ("; every value below 1 %: the measure is at its floor" if r.get("floor") else "")


def write_markdown(data: dict, summary: dict, rows: list[dict], tradeoffs: dict, path: str) -> None:
    """Write ``report.md``: the conclusions, then one section per function below, in reading order."""
    study = data["study"]
    primary = _primary_runs(data)
    lines = [f"# JaFR study: {study['name']}", "", *conclusions(data, summary, rows)]
    lines += _setting_section(study, data["corruptions"])
    lines += _headline_section(data, summary)
    lines += _claims_section(study, rows)
    for axis, rows_t in tradeoffs.items():
        lines += _tradeoff_markdown(study, axis, rows_t)
    lines += _corruptions_section(data["corruptions"], primary)
    lines += _adversarial_section(study, primary)
    lines += _frequency_section(study)
    lines += _failed_section(data["failed"])
    lines += _files_section(study)
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _setting_section(study: dict, corr: dict) -> list[str]:
    """Dataset, model, training and penalty settings; what the seeds vary; budget and evaluation; wall time."""
    adv, eps_label, seeds = study["adversarial"], study["eps_key"], study["seeds"]
    jafr_note = (f" Headline and verdicts use λ = {study['primary_lam']:g}" + (f", cutoff {study['primary_cutoff']:g}" if study["formulation"] == "ratio" else "")
                 + "; the trade-off section shows the others." if (len(study["lams"]) > 1 or len(study["cutoffs"]) > 1) else "")
    return [
        "## Setting",
        "",
        f"Dataset **{study['dataset']}**, model **{study['model']}**, {study['epochs']} epoch(s) per run"
        f" ({_training_text(study)}). JaFR penalty: {_formulation_text(study)}.{jafr_note}",
        "",
        f"Seeds {', '.join(map(str, seeds))}: every method is trained once per seed. Each cell below is the mean over"
        " seeds ± the half-width of its 95 % confidence interval (Student's t); with one seed no interval exists and"
        " only the value is shown. The seeds vary training only (initialisation, data order, augmentation, training"
        f" attacks): every run is evaluated on the same {study['eval_n']} test images"
        + (" (the full test set)" if study.get("eval_full") else " (a fixed random subset)")
        + ", with the same corruption draws and attack starts.",
        "",
        f"Budget ({study['budget_origin']}): {study['budget_text']}. Evaluation: corruptions {corr['source']};"
        f" FGSM and PGD-{adv['steps']} × {adv['restarts']} restart(s) (step ε/4) on the first {adv['n']} images at"
        f" ε ∈ {{{', '.join(adv['eps_keys'])}}}, CW margin (κ = 50) at ε = {eps_label}.",
        "",
        f"Wall time of this invocation: {study.get('total_seconds', float('nan')):.0f} s (training"
        f" {study.get('train_seconds', float('nan')):.0f} s, evaluation {study.get('eval_seconds', float('nan')):.0f} s;"
        f" {study.get('trained', 0)} run(s) trained, {study.get('evaluated', 0)} evaluated, {study.get('reused', 0)} reused"
        f" from disk) on {study.get('device_name', study['device'])}"
        + (f", {study['runs_at_a_time']} runs at a time on one thread each (training and evaluation times add"
           " up over them)" if study.get("runs_at_a_time", 1) > 1 else "")
        + f", torch {study.get('torch_version', '?')}.",
        "",
    ]


def _headline_section(data: dict, summary: dict) -> list[str]:
    """One row per method at the primary setting; the image-sampling half-widths; AutoAttack when run."""
    study = data["study"]
    eps_label = study["eps_key"]
    lines = [
        "## Headline",
        "",
        f"Accuracy (%) on clean images, corruptions (mean over severities and over the corruptions of each measured"
        f" group), FGSM and PGD at ε = {eps_label}; the low-frequency ratio of the model's Jacobian (share of |F J|²"
        f" at r ≤ {study['primary_cutoff']:g}); the Fourier heat map's mean error.",
        "",
        "| method | seeds | " + " | ".join(_title(m[1], study) for m in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for label, row in summary.items():
        cells = [_cell(stats.Interval(row[k]["mean"], row[k]["ci"], row[k]["n"]), scale) for k, _, scale in METRICS]
        lines.append(f"| {label} | {row['clean']['n']} | " + " | ".join(cells) + " |")
    half = image_half_widths(data)
    if half:
        lines += ["", "Image sampling: every run sees the same test images, so the intervals above leave out how the"
                  " numbers would move on other images; its 95 % binomial half-width (pp, the largest over methods;"
                  " for a corruption group the mean over its sets, a bound for correlated errors): "
                  + ", ".join(f"{_title(t, study)} ± {100 * half[k]:.1f}" for k, t in BINOMIAL_METRICS if k in half)
                  + ". Paired differences on the same images carry less of it."]
    if any("autoattack" in r for r in summary.values()):
        lines += ["", f"AutoAttack (standard, L-inf, ε = {eps_label}): " + ", ".join(
            f"{k} {_cell(stats.Interval(r['autoattack']['mean'], r['autoattack']['ci'], r['autoattack']['n']), 100)} %"
            for k, r in summary.items() if "autoattack" in r)]
    return lines + [""]


def _claims_section(study: dict, rows: list[dict]) -> list[str]:
    """The paper's claims: one row per paired comparison with its verdict, the tally, the forest plot."""
    counts = {v: sum(r["verdict"] == v for r in rows) for v in (stats.AGREES, stats.DISAGREES, stats.WITHIN_NOISE, stats.NO_INTERVAL)}
    lines = [
        "## The paper's claims, checked",
        "",
        "The paper (Chan, Ong, Tan, IJCAI 2022, abstract): biasing the Jacobian towards low frequencies improves"
        " accuracy on high-frequency corruptions and adversarial perturbations and costs accuracy on low-frequency"
        " corruptions; a high-frequency bias does the reverse. Each row compares a JaFR model with the same training"
        " without JaFR, seed by seed: the difference (percentage points, method − baseline) is averaged over seeds"
        " with its 95 % interval. A claim **agrees** or **disagrees** only when that interval excludes 0; otherwise"
        " the difference is **within noise**.",
        "",
    ]
    few = seeds_warning(len(study["seeds"]), rows)
    if few:
        lines += [f"**Too few seeds.** {few}", ""]
    lines += [
        "| comparison | on | paper expects | difference (pp) | per seed | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = stats.format_interval(stats.Interval(r["mean"], r["ci"], r["n"]), signed=True)
        per = ", ".join(f"{100 * d:+.1f}" for d in r["per_seed"])
        lines.append(f"| {r['label']} vs {r['baseline']} | {r['what']} | {'better' if r['expected'] > 0 else 'worse'} |"
                     f" {diff} | {per} | {_verdict_cell(r)} |")
    return lines + [
        "",
        f"Of {len(rows)} checked claims: {counts[stats.AGREES]} agree, {counts[stats.DISAGREES]} disagree,"
        f" {counts[stats.WITHIN_NOISE]} within noise" + (f", {counts[stats.NO_INTERVAL]} without an interval (one seed)" if counts[stats.NO_INTERVAL] else "") + ".",
        "",
        "![verdicts](verdicts.png)",
        "",
    ]


def _corruptions_section(corr: dict, primary: dict) -> list[str]:
    """The measured low/high-frequency grouping and its rule, then the accuracy per corruption and method."""
    groups = corr["groups"]
    lines = [
        "## Corruptions by frequency",
        "",
        f"Each corruption's frequency character is measured on {corr.get('n', 500)} evaluation images: the"
        f" low-frequency ratio (energy share at r ≤ {corr['cutoff']:g}) of (corrupted − clean), averaged over images"
        f" and severities. Rule: a corruption is **low-frequency** if that share exceeds {corr['threshold']}, i.e. most"
        " of the change lies in the low band; otherwise **high-frequency** (white noise puts only the band's share of"
        " the bins there).",
        "",
        f"* low-frequency: {', '.join(groups['low']) or '–'}",
        f"* high-frequency: {', '.join(groups['high']) or '–'}",
    ]
    for name, why in corr.get("not_generated", {}).items():
        lines.append(f"* not evaluated: {name} ({why})")
    lines += [
        "",
        "Accuracy (%) per corruption, mean over severities and seeds:",
        "",
        "| corruption | group | diff. low-freq ratio | " + " | ".join(primary) + " |",
        "|---|---|---|" + "---|" * len(primary),
    ]
    for name in groups["low"] + groups["high"]:
        grp = "low" if name in groups["low"] else "high"
        accs = " | ".join(_cell(stats.mean_ci([e["corruptions"][name]["mean"] for e in evs]), 100) for evs in primary.values())
        lines.append(f"| {name} | {grp} | {corr['character'][name]['mean']:.3f} | {accs} |")
    return lines + [
        "",
        "![corruption accuracy](corruption_accuracy.png)",
        "",
        "![corruption frequency](corruption_frequency.png)",
        "",
    ]


def _adversarial_section(study: dict, primary: dict) -> list[str]:
    """FGSM and PGD accuracy at every radius and CW at the study ε, per method."""
    adv, eps_label = study["adversarial"], study["eps_key"]
    lines = [
        "## Adversarial robustness",
        "",
        "| method | " + " | ".join(f"FGSM {k}" for k in adv["eps_keys"]) + " | "
        + " | ".join(f"PGD {k}" for k in adv["eps_keys"]) + f" | CW {eps_label} |",
        "|---|" + "---|" * (2 * len(adv["eps_keys"]) + 1),
    ]
    for label, evs in primary.items():
        def cell(kind, k):
            return _cell(stats.mean_ci([e["adversarial"].get(kind, {}).get(k) for e in evs]), 100)
        lines.append(f"| {label} | " + " | ".join(cell("fgsm", k) for k in adv["eps_keys"]) + " | "
                     + " | ".join(cell("pgd_ce", k) for k in adv["eps_keys"]) + f" | {cell('pgd_cw', eps_label)} |")
    return lines + [
        "",
        "![accuracy vs eps](accuracy_vs_eps.png)",
        "",
    ]


def _frequency_section(study: dict) -> list[str]:
    """What the Jacobian spectra, radial profiles and Fourier heat maps show, with the figures."""
    return [
        "## Frequency analyses",
        "",
        "Mean |rfft2| of the input gradient J = ∂CE/∂x over the evaluation images (eval-mode model, averaged over"
        " seeds), mirrored to the full plane and centred; the first panel is the images' own spectrum.",
        "",
        "![Jacobian spectra](jacobian_spectra.png)",
        "",
        "![radial profiles](radial_profiles.png)",
        "",
        f"Fourier heat maps (Yin et al. 2019) on {study.get('heat_map_n', 0)} images: error rate when one Fourier basis"
        " image (random sign per channel) is added and the result clamped to [0, 1]; DC in the centre; mean over seeds.",
        "",
        "![Fourier heat maps](fourier_heatmaps.png)",
        "",
    ]


def _failed_section(failed: list[dict]) -> list[str]:
    """The runs that diverged and are left out (nothing when none did)."""
    if not failed:
        return []
    return (["## Failed runs", "", "These runs diverged (non-finite loss) and are left out of every table:", ""]
            + [f"* `{r['folder']}`: {r.get('error', '')}" for r in failed] + [""])


def _files_section(study: dict) -> list[str]:
    """Where the runs and numbers are, and how to rebuild or extend the study."""
    return [
        "## Files",
        "",
        "Each run's folder (`<method>[_lam<λ>_cut<cutoff>]/seed<k>/`) holds its training config, metrics, checkpoint"
        " and `eval.json`; `summary.json` holds the headline numbers, verdicts and trade-offs. Rebuild this report"
        f" from disk with `jafr study --name {study['name']} --report-only`; rerunning the study with more seeds or λ"
        " values trains only the new runs.",
        "",
    ]


def _tradeoff_markdown(study: dict, axis: str, rows: dict) -> list[str]:
    name = "λ" if axis == "lam" else "cutoff"
    fixed = (f"cutoff {study['primary_cutoff']:g}" if axis == "lam" else f"λ = {study['primary_lam']:g}")
    lines = [
        f"## Trade-off against {name}",
        "",
        f"Every JaFR method at each {name} ({fixed}), mean ± 95 % CI over seeds; the baseline row is the same"
        f" training without JaFR. J's low-frequency ratio is measured at the run's own cutoff"
        + (" (so the baseline's changes with it)." if axis == "cutoff" else "."),
        "",
        f"| method | {name} | " + " | ".join(_title(m[1], study) for m in TRADEOFF_METRICS) + " |",
        "|---|---|" + "---|" * len(TRADEOFF_METRICS),
    ]
    shown = set()
    for label, entry in rows.items():
        if entry["baseline"] not in shown and axis == "lam" and entry["baseline_arms"] and entry["baseline_arms"][0]:
            shown.add(entry["baseline"])
            cells = [_cell(interval(entry["baseline_arms"][0], k), s) for k, _, s in TRADEOFF_METRICS]
            lines.append(f"| {entry['baseline']} (baseline) | – | " + " | ".join(cells) + " |")
        for v, arm, base in zip(entry["values"], entry["arms"], entry["baseline_arms"]):
            cells = [_cell(interval(arm, k), s) for k, _, s in TRADEOFF_METRICS]
            lines.append(f"| {label} | {v:g} | " + " | ".join(cells) + " |")
            if axis == "cutoff" and base:
                cells = [_cell(interval(base, k), s) for k, _, s in TRADEOFF_METRICS]
                lines.append(f"| {entry['baseline']} (baseline) | {v:g} | " + " | ".join(cells) + " |")
    lines += ["", f"![trade-off against {name}]({TRADEOFF_FIGURES[axis]})", ""]
    return lines


def build_report(root: str) -> str:
    """Write ``report.md``, the figures and ``summary.json`` in study folder ``root``; returns the report path."""
    data = load_study(root)
    if not data["runs"]:
        raise FileNotFoundError(f"no evaluated runs (<arm>/seed<k>/eval.json) under {root}")
    summary = summarise(data)
    rows = verdicts(data)
    study = data["study"]
    tradeoffs = {}
    for axis, key in (("lam", "lams"), ("cutoff", "cutoffs")):
        if len(study[key]) > 1:
            t = tradeoff_rows(data, axis)
            if t:
                tradeoffs[axis] = t
                plot_tradeoff(t, axis, os.path.join(root, TRADEOFF_FIGURES[axis]))
    plot_spectra(data, os.path.join(root, "jacobian_spectra.png"))
    plot_radial(data, os.path.join(root, "radial_profiles.png"))
    plot_heat_maps(data, os.path.join(root, "fourier_heatmaps.png"))
    plot_corruptions(data, os.path.join(root, "corruption_accuracy.png"))
    plot_eps(data, os.path.join(root, "accuracy_vs_eps.png"))
    plot_corruption_frequency(data, os.path.join(root, "corruption_frequency.png"))
    plot_verdicts(rows, os.path.join(root, "verdicts.png"))
    tradeoff_json = {
        axis: {label: {"values": e["values"], "baseline": e["baseline"],
                       "metrics": {k: [{"mean": interval(a, k).mean, "ci": interval(a, k).half_width} for a in e["arms"]]
                                   for k, _, _ in TRADEOFF_METRICS}} for label, e in t.items()}
        for axis, t in tradeoffs.items()
    }
    with open(os.path.join(root, "summary.json"), "w") as f:
        json.dump({"study": {k: v for k, v in study.items() if k != "runs"}, "groups": data["corruptions"]["groups"],
                   "methods": summary, "verdicts": rows, "tradeoffs": tradeoff_json,
                   "failed": [r["folder"] for r in data["failed"]]}, f, indent=2)
    path = os.path.join(root, "report.md")
    write_markdown(data, summary, rows, tradeoffs, path)
    few = seeds_warning(len(study["seeds"]), rows)
    if few:
        print(f"warning: too few seeds. {few}", file=sys.stderr)
    return path
