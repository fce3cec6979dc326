"""The registry of training methods: names, what each one does, its baseline, and the paper's claims.

Every place that needs to know what a method is asks this module: the training loop (which attack, whether
the JaFR or GradAlign term is added), the study (parsing ``"jafr:high"``, default methods and λ) and the
report (which comparisons test the paper's claims, and in which direction).

A *method* (``"fgsm+jafr"``) is what :class:`jafr_kernels.train.TrainConfig` trains; a *run spec*
(``"fgsm+jafr:high"``) is a method plus the JaFR target, as ``jafr study --methods`` takes it. Its label
(``"fgsm+jafr_high"``) names the run's folder and its row in the report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from jafr_kernels.api import FORMULATIONS, TARGETS  # the penalty's own choices


@dataclass(frozen=True)
class Method:
    """One training method.

    Attributes:
        name: registry name (``TrainConfig.method``).
        attack: perturbation of the CE term during training: None (clean), ``"fgsm"`` or ``"pgd"``.
        jafr: adds ``λ · P(J)``, J the input gradient at the clean input.
        gradalign: adds GradAlign's ``λ_GA · (1 - cos)`` term (FGSM step ε instead of 1.25 ε).
        baseline: the method a JaFR method is compared with (the same training without the JaFR term).
        summary: one line for help texts and reports.
    """

    name: str
    attack: Optional[str]
    jafr: bool
    gradalign: bool = False
    baseline: Optional[str] = None
    summary: str = ""

    @property
    def needs_double_backward(self) -> bool:
        """True if the default (double-backward) Jacobian makes the step differentiate twice."""
        return self.jafr or self.gradalign

    @property
    def unused_fields(self) -> tuple:
        """``TrainConfig`` fields this method ignores (a study resets them, so its baselines' settings do not
        change with the JaFR settings)."""
        unused = []
        if not self.jafr:
            unused += ["lam", "cutoff", "target", "formulation", "jacobian_mode", "fd_h", "jafr_every", "jafr_fraction"]
        if not self.gradalign:
            unused.append("gradalign_lambda")
        if self.attack != "pgd":
            unused.append("pgd_steps")
        if self.attack is None and not self.gradalign:
            unused.append("eps")
        return tuple(unused)


_ALL = (
    Method("standard", None, False, summary="cross-entropy on clean images"),
    Method("jafr", None, True, baseline="standard", summary="clean training + JaFR"),
    Method("fgsm", "fgsm", False, summary="FGSM adversarial training (zero init, step 1.25 ε)"),
    Method("fgsm+jafr", "fgsm", True, baseline="fgsm", summary="FGSM adversarial training + JaFR"),
    Method("pgd", "pgd", False, summary="PGD-10 adversarial training (step ε/4, zero init)"),
    Method("pgd+jafr", "pgd", True, baseline="pgd", summary="PGD-10 adversarial training + JaFR"),
    Method("gradalign", "fgsm", False, gradalign=True, summary="FGSM (step ε) + GradAlign"),
)
METHODS: dict[str, Method] = {m.name: m for m in _ALL}
METHOD_NAMES = tuple(METHODS)

# The default study: the paper's comparison on one dataset (GradAlign and PGD on request).
DEFAULT_STUDY = ("standard", "jafr:low", "jafr:high", "fgsm", "fgsm+jafr:low")

# λ per formulation: the ratio penalty lies in [0, 1] (0.1 chosen by a sweep on Fashion-MNIST, docs/study.md);
# 0.001 is the authors' CIFAR-10 value for their log-sum-exp score.
DEFAULT_LAMBDA = {"ratio": 0.1, "official": 0.001}  # one per FORMULATIONS entry


def get_method(name: str) -> Method:
    """The registered method ``name``; a ValueError lists the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method must be one of {', '.join(METHOD_NAMES)}; got {name!r}") from None


def default_lambda(formulation: str) -> float:
    """λ used when none is given: 0.1 for the ratio formulation, 0.001 for the official one."""
    if formulation not in DEFAULT_LAMBDA:
        raise ValueError(f"formulation must be one of {', '.join(FORMULATIONS)}; got {formulation!r}")
    return DEFAULT_LAMBDA[formulation]


@dataclass(frozen=True)
class RunSpec:
    """A method as a study runs it: the registered method and, for JaFR methods, the target band."""

    method: str
    target: str = "low"

    @property
    def info(self) -> Method:
        return get_method(self.method)

    @property
    def label(self) -> str:
        """``"standard"``, ``"jafr_low"``, ``"fgsm+jafr_high"``: JaFR labels always carry the target."""
        return f"{self.method}_{self.target}" if self.info.jafr else self.method

    @property
    def baseline(self) -> Optional["RunSpec"]:
        """The spec this one is compared with (None for methods without JaFR)."""
        base = self.info.baseline
        return None if base is None else RunSpec(base)

    def __str__(self) -> str:
        return f"{self.method}:{self.target}" if self.info.jafr else self.method


def parse(spec: str) -> RunSpec:
    """``"jafr:high"`` -> RunSpec("jafr", "high"); the target defaults to low; a label (``"jafr_high"``) works too.

    Only JaFR methods take a target.
    """
    text = str(spec).strip()
    name, sep, target = text.partition(":")
    if not sep:
        for t in TARGETS:  # accept labels, so report rows and folders can be named as they appear
            if name.endswith(f"_{t}") and name[: -len(t) - 1] in METHODS and METHODS[name[: -len(t) - 1]].jafr:
                name, target, sep = name[: -len(t) - 1], t, ":"
    method = get_method(name)
    if not method.jafr:
        if sep:
            raise ValueError(f"only JaFR methods take a target (method:low|high); {name!r} does not, got {spec!r}")
        return RunSpec(name)
    target = target or "low"
    if target not in TARGETS:
        raise ValueError(f"the JaFR target must be 'low' or 'high', got {spec!r}")
    return RunSpec(name, target)


# --------------------------------------------------------------------------- the paper's claims
# The paper (abstract): a low-frequency bias of the Jacobian improves accuracy on high-frequency corruptions
# and adversarial perturbations and costs accuracy on low-frequency corruptions; a high-frequency bias does
# the reverse. Each entry: (metric key of the report's summary, what it is, direction for a *low* target).
# Adversarial perturbations are judged by PGD at the study's claim radius (a fraction of the training ε, see
# jafr_kernels.eval.study.CLAIM_EPS_SCALE), where models without adversarial training are not at 0 %.
CLAIM_METRICS = (
    ("corruption_high", "high-frequency corruptions", +1),
    ("corruption_low", "low-frequency corruptions", -1),
    ("pgd_claim", "PGD (CE) at ε = {claim_eps}", +1),
)


@dataclass(frozen=True)
class Claim:
    """One checked statement: ``label`` (a JaFR run) scores higher (+1) or lower (-1) than ``baseline`` on ``metric``."""

    label: str
    baseline: str
    metric: str
    what: str
    expected: int


def claims(specs) -> list[Claim]:
    """The paper's claims that a study of ``specs`` (RunSpecs or strings) can check: one per JaFR spec whose
    baseline is also in the study, times the metrics of :data:`CLAIM_METRICS`."""
    specs = [s if isinstance(s, RunSpec) else parse(s) for s in specs]
    labels = {s.label for s in specs}
    out = []
    for spec in specs:
        base = spec.baseline
        if base is None or base.label not in labels:
            continue
        sign = 1 if spec.target == "low" else -1
        out += [Claim(spec.label, base.label, key, what, sign * direction) for key, what, direction in CLAIM_METRICS]
    return out
