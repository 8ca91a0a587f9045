"""`ghostnetv3 ablate`: a grid of named training arms x seeds, each an ordinary `train` run, summarised
as mean ± std and paired differences to a reference arm (Markdown, JSON, PNG)."""
from .plan import Arm, Plan, load_plan
from .report import paired_diff, summarize, write_report
from .runner import Runner, scores_from_confusion

__all__ = ["Arm", "Plan", "load_plan", "Runner", "paired_diff", "summarize", "write_report",
           "scores_from_confusion"]
