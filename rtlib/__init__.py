"""rtlib: fine-tune ViTs with seven strategies and measure the robustness-accuracy trade-off."""
import warnings

__version__ = "0.1.0"

# peft imports tqdm.auto, which warns in a notebook kernel without ipywidgets; our progress bars
# are plain text there, which is what an executed book should show.
try:
    from tqdm import TqdmExperimentalWarning, TqdmWarning

    warnings.filterwarnings("ignore", category=TqdmWarning)
    warnings.filterwarnings("ignore", category=TqdmExperimentalWarning)
except ImportError:  # pragma: no cover
    pass
