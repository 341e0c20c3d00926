"""Colours of the ground truth and of each model, the same in every figure and in the viewer.

The seed paper draws GT in red, the vendor model (VPM) in blue and the fine-tuned model (LFT) in
green. Red against green is the pair that colour-vision deficiency confuses most, so a
colour-blind-safe palette (Okabe & Ito, 2008) is offered too. Models are coloured by their role
in the comparison — model *a* (the reference, VPM) takes the first model colour, model *b* (the
challenger, LFT) the second, further models the next ones — so that a study whose models have
other names still looks like the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dlas.errors import ReportError

__all__ = ["GROUND_TRUTH", "PALETTES", "Palette", "get_palette"]

#: Name under which the ground truth appears in legends, toggles and colour maps.
GROUND_TRUTH = "GT"


@dataclass(frozen=True)
class Palette:
    """A ground-truth colour and an ordered list of model colours (hex ``#rrggbb``)."""

    name: str
    ground_truth: str
    models: tuple[str, ...]
    description: str
    colour_names: tuple[str, ...] = ()

    def colours(self, models: Sequence[str]) -> dict[str, str]:
        """Colour of the ground truth and of each model, in the given role order.

        Models beyond the palette's length cycle through it again; that only happens with
        more models than any study compares at once.
        """
        out = {GROUND_TRUTH: self.ground_truth}
        for i, model in enumerate(models):
            out[model] = self.models[i % len(self.models)]
        return out

    def names(self, models: Sequence[str]) -> dict[str, str]:
        """Plain-English name of each colour (for figure captions), in role order."""
        names = self.colour_names or (self.ground_truth, *self.models)
        out = {GROUND_TRUTH: names[0]}
        for i, model in enumerate(models):
            out[model] = names[1 + i % (len(names) - 1)]
        return out


PALETTES: dict[str, Palette] = {
    "paper": Palette(
        name="paper",
        ground_truth="#e3120b",
        models=("#1f4fd8", "#14a33a", "#ff8c00", "#8e44ad", "#00a5b5", "#8b5a2b"),
        description="the seed paper's colours: GT red, VPM blue, LFT green",
        colour_names=("red", "blue", "green", "orange", "purple", "teal", "brown"),
    ),
    "colorblind": Palette(
        name="colorblind",
        ground_truth="#d55e00",
        models=("#0072b2", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000"),
        description="Okabe-Ito colour-blind-safe colours: GT vermillion, VPM blue, "
        "LFT bluish green",
        colour_names=(
            "vermillion",
            "blue",
            "bluish green",
            "reddish purple",
            "orange",
            "sky blue",
            "black",
        ),
    ),
}


def get_palette(name: str) -> Palette:
    """The palette called ``name`` (``paper`` or ``colorblind``).

    Raises
    ------
    ReportError
        If there is no such palette.
    """
    try:
        return PALETTES[name]
    except KeyError:
        raise ReportError(
            "unknown colour palette",
            where="--palette",
            expected=" or ".join(PALETTES),
            found=repr(name),
            fix="choose " + " or ".join(PALETTES),
        ) from None
