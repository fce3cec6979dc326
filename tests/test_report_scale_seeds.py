"""Report details: the Jacobian spectra share one colour scale; a study with too few seeds says so."""
import numpy as np

from jafr_kernels.eval import report, stats


def test_spectra_panels_share_one_colour_scale(tmp_path, monkeypatch):
    shown = {}

    def keep(plt, fig, path):
        shown["clims"] = [im.get_clim() for ax in fig.axes for im in ax.get_images()]
        plt.close(fig)

    monkeypatch.setattr(report, "_save", keep)
    rng = np.random.default_rng(0)
    panels = [("images", rng.random((8, 8)) * 100, "0.9"), ("J: a", rng.random((8, 8)) * 1e-6, "0.3"),
              ("J: b", rng.random((8, 8)) ** 8, "0.1")]  # scales and spreads differ by orders
    report.spectra_figure(panels, str(tmp_path / "s.png"), "t")
    assert len(shown["clims"]) == 3 and len(set(shown["clims"])) == 1


def _rows(*verdicts):
    return [{"verdict": v} for v in verdicts]


def test_too_few_seeds_warning():
    assert "no interval" in report.seeds_warning(1, _rows(stats.NO_INTERVAL))
    two = report.seeds_warning(2, _rows(stats.AGREES))
    assert "12.7 standard errors" in two and "--seeds 4" in two
    assert "within noise" in report.seeds_warning(3, _rows(stats.WITHIN_NOISE, stats.WITHIN_NOISE))
    assert report.seeds_warning(3, _rows(stats.WITHIN_NOISE, stats.DISAGREES)) is None
    assert report.seeds_warning(5, _rows(stats.AGREES)) is None


def test_training_text_names_the_settings_the_methods_use():
    """GradAlign's weight and the training PGD steps are reported when a method of the study uses them (the
    method registry decides, whatever the spec's spelling)."""
    train = {"batch_size": 128, "lr": 0.2, "lr_schedule": "cyclic", "momentum": 0.9, "weight_decay": 5e-4, "eps": 0.1,
             "augment": True, "dtype": "float32", "bf16": False, "freeze_bn": True, "gradalign_lambda": 0.3, "pgd_steps": 7}

    def text(*methods):
        return report._training_text({"train": train, "methods": list(methods)})

    assert "GradAlign λ 0.3" not in text("standard", "fgsm", "jafr:low") and "PGD-7" not in text("fgsm+jafr:high")
    assert "GradAlign λ 0.3" in text("standard", "gradalign") and "PGD-7" not in text("gradalign")
    assert "training PGD-7" in text("pgd+jafr:high") and "training PGD-7" in text("pgd+jafr_low")
