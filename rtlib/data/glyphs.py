"""The embedded benchmark: a seeded, offline world of rendered glyphs.

Images are characters drawn with the TrueType fonts that matplotlib ships (DejaVu, STIX,
Computer Modern), with random colours, size, rotation, shift and noise, in one of four
*domains* (the DomainNet analogue):

- ``print``: a solid glyph on a flat background;
- ``outline``: only the glyph's contour, like a sketch;
- ``texture``: the glyph filled with a stripe, check or noise pattern, like a painting;
- ``clutter``: a solid glyph over a busy background of lines and blobs, like a photo;
- ``dots``: the glyph as a halftone of round dots on a coarse grid, like a printed screen or a
  dot-matrix display (new in issue 33: no upstream model has seen it).

The upstream task (the ImageNet of this world) is 74 Latin letters, digits and signs in 16
fonts and the domains print, texture and clutter; ``outline`` and ``dots`` are never seen
upstream. ``upstream2`` (the converged model's) has print and clutter only: texture is new to
it too. Downstream
tasks range from near (digits in six held-out fonts) to far (Greek letters, mathematical
symbols) and fine-grained (which of eight fonts drew a letter). Every image is a pure function
of (seed, task, split, index), so any subset can be regenerated identically.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

DOMAINS = ("print", "outline", "texture", "clutter", "dots")
SUPERSAMPLE = 3  # render at 3x and downsample: smooth edges at 24 px


def font_dir() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


# Fonts that draw real Latin glyphs (the cm* symbol and extension fonts, STIX size and non-Unicode
# variants, and the Last Resort box font are left out).
UPSTREAM_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmtt10.ttf", "cmmi10.ttf",
)
HELD_OUT_FONTS = (
    "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSerif-Italic.ttf",
    "STIXGeneralItalic.ttf", "cmss10.ttf", "cmti10.ttf",
)
ALL_FONTS = UPSTREAM_FONTS + HELD_OUT_FONTS
# Eight fonts of distinct families and weights: the fine-grained task's classes.
FONT_ID_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
    "STIXGeneral.ttf", "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf",
)

#: Type families (the ``family`` task's classes) and the fonts that make each.
FAMILIES = {
    "sans": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
             "DejaVuSans-BoldOblique.ttf", "cmss10.ttf"),
    "serif": ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
              "STIXGeneral.ttf", "STIXGeneralBol.ttf", "cmr10.ttf", "cmb10.ttf"),
    "mono": ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
             "DejaVuSansMono-BoldOblique.ttf", "cmtt10.ttf"),
}

UPPER = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I, O: they are l/1 and 0 in too many fonts
LOWER = "abdefghijkmnpqrtuy"  # no c, o, s, v, w, x, z (case twins) and no l
DIGITS = "0123456789"
SIGNS = "!?#$%&@+=<>*/\\()[]{}~^"
GREEK = "αβγδεζηθικλμνξπρστυφχψω"  # no omicron (it is an o)
SYMBOLS = "∑∫∂∞≈≠≤≥∈∩∪⊂∀∃∇√±×÷→←↑↓♠♣♥♦"
FONT_ID_TEXT = "ABDEGHKMNPRabdeghkmnpqr"  # letters whose shapes differ most between fonts


@dataclass(frozen=True)
class GlyphSpec:
    """A glyph task: its classes and the fonts (and, for font identification, characters)."""

    name: str
    classes: tuple[str, ...]
    fonts: tuple[str, ...]
    kind: str = "char"  # "char": the class is the character; "font": the class is the font;
    # "group": the class is a group of fonts (``groups``), e.g. a type family
    chars: str = ""  # for kind="font" and "group": the characters drawn
    domains: tuple[str, ...] = ("print",)  # domains sampled for the training split
    description: str = ""
    rotation: float = 0.0  # degrees every glyph is turned by, beyond the +-15 of jitter
    groups: tuple[tuple[str, ...], ...] = ()  # for kind="group": the fonts of each class


def _covering(fonts: Sequence[str], chars: str) -> tuple[str, ...]:
    from matplotlib.ft2font import FT2Font

    keep = []
    for f in fonts:
        face = FT2Font(os.path.join(font_dir(), f))
        if all(face.get_char_index(ord(c)) for c in chars):
            keep.append(f)
    return tuple(keep)


#: How each rendering is said in a task's description.
RENDERINGS = {"outline": "as outlines", "texture": "filled with a pattern",
              "dots": "as halftone dots"}


def _grid_specs(named_above: Sequence[str]) -> list[GlyphSpec]:
    """Digits, capitals and Greek letters, turned by 90 degrees or not, drawn in each rendering
    no upstream model saw (outline, texture for upstream2, dots): distance from upstream in
    small steps with the classes held fixed."""
    greek_fonts = _covering(ALL_FONTS, GREEK)
    scripts = {"digits": (DIGITS, HELD_OUT_FONTS, "10 digits (seen upstream) in 6 held-out fonts"),
               "letters": (UPPER, HELD_OUT_FONTS,
                           "24 capital letters (seen upstream) in 6 held-out fonts"),
               "greek": (GREEK, greek_fonts, f"23 Greek lower-case letters (unseen upstream) "
                                             f"in {len(greek_fonts)} fonts")}
    out = []
    for script, (chars, fonts, what) in scripts.items():
        for angle in (0, 90):
            for domain, words in (("print", ""), *RENDERINGS.items()):
                name = script + (f"_r{angle}" if angle else "") + (
                    f"_{domain}" if domain != "print" else "")
                if name in named_above or (angle == 0 and domain == "print"):
                    continue
                turned = f", turned by {angle} degrees" if angle else ""
                out.append(GlyphSpec(name, tuple(chars), fonts, domains=(domain,),
                                     rotation=float(angle),
                                     description=f"{what}{turned}, drawn {words or 'solid'}"))
    return out


@functools.lru_cache(maxsize=None)
def specs() -> dict[str, GlyphSpec]:
    """Every glyph task, the upstream (pre-training) tasks first."""
    upstream = UPPER + LOWER + DIGITS + SIGNS
    out = [
        GlyphSpec("upstream", tuple(upstream), UPSTREAM_FONTS,
                  domains=("print", "print", "texture", "clutter"),
                  description="74 Latin letters, digits and signs in 16 fonts; print, texture "
                              "and clutter (the pre-training task)"),
        # The converged model's pre-training task (issue 33): the same classes and fonts in print
        # and clutter only, so that texture, like outline, is a domain it never saw.
        GlyphSpec("upstream2", tuple(upstream), UPSTREAM_FONTS,
                  domains=("print", "print", "clutter"),
                  description="74 Latin letters, digits and signs in 16 fonts; print and clutter "
                              "(the converged model's pre-training task: texture and outline "
                              "unseen)"),
        GlyphSpec("digits", tuple(DIGITS), HELD_OUT_FONTS,
                  description="10 digits (seen upstream) in 6 held-out fonts: near and simple"),
        GlyphSpec("letters", tuple(UPPER), HELD_OUT_FONTS,
                  description="24 capital letters (seen upstream) in 6 held-out fonts: near, "
                              "more classes"),
        GlyphSpec("greek", tuple(GREEK), _covering(ALL_FONTS, GREEK),
                  description="23 Greek lower-case letters (unseen upstream): farther"),
        GlyphSpec("symbols", tuple(SYMBOLS), _covering(ALL_FONTS, SYMBOLS),
                  description=f"{len(SYMBOLS)} mathematical and card symbols (unseen upstream): far"),
        # A graded ladder of distance (issue 33): the seen capitals turned further and further
        # from the orientations upstream saw (+-15 degrees).
        *(GlyphSpec(f"letters_r{angle}", tuple(UPPER), HELD_OUT_FONTS, rotation=float(angle),
                    description=f"24 capital letters (seen upstream) in 6 held-out fonts, "
                                f"turned by {angle} degrees: an orientation upstream never saw")
          for angle in (45, 90, 180)),
        # A seen script in a domain no upstream model saw (its in-domain images are dots).
        GlyphSpec("digits_dots", tuple(DIGITS), HELD_OUT_FONTS, domains=("dots",),
                  description="10 digits (seen upstream) in 6 held-out fonts, drawn as halftone "
                              "dots: a rendering upstream never saw"),
        GlyphSpec("letters_dots", tuple(UPPER), HELD_OUT_FONTS, domains=("dots",),
                  description="24 capital letters (seen upstream) in 6 held-out fonts, drawn "
                              "as halftone dots: a rendering upstream never saw"),
        # Unseen script and unseen orientation together: farther than either alone.
        GlyphSpec("greek_r90", tuple(GREEK), _covering(ALL_FONTS, GREEK), rotation=90.0,
                  description="23 Greek lower-case letters (unseen upstream) turned by 90 "
                              "degrees: unseen script and orientation"),
        # The ladder's grid (issue 33): a script turned or not and drawn in each rendering
        # upstream2 never saw, named <script>[_r90][_<domain>] (the ones above keep theirs).
        *_grid_specs(("letters_r90", "greek_r90", "digits_dots", "letters_dots")),
        GlyphSpec("family", tuple(FAMILIES), tuple(f for g in FAMILIES.values() for f in g),
                  kind="group", chars=FONT_ID_TEXT, groups=tuple(FAMILIES.values()),
                  description="which type family (sans-serif, serif, monospace) drew a letter: "
                              "style, coarser than font identity"),
        GlyphSpec("fonts", tuple(f.rsplit(".", 1)[0] for f in FONT_ID_FONTS), FONT_ID_FONTS,
                  kind="font", chars=FONT_ID_TEXT,
                  description="which of 8 fonts drew a letter: fine-grained, needs the style "
                              "upstream learned to ignore"),
    ]
    return {s.name: s for s in out}


@functools.lru_cache(maxsize=512)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(os.path.join(font_dir(), name), size)


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours at least 0.35 apart in luminance."""
    weights = np.array([0.299, 0.587, 0.114])
    while True:
        fg, bg = rng.random(3), rng.random(3)
        if abs(fg @ weights - bg @ weights) >= 0.35:
            return fg, bg


def _texture(rng: np.random.Generator, size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A size x size x 3 pattern mixing colours a and b: stripes, checks or blotchy noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        angle, period = rng.uniform(0, math.pi), rng.uniform(2.5, 6)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period)
    elif kind == 1:
        period = rng.uniform(3, 7)
        t = ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
    else:
        coarse = rng.random((4, 4)).astype(np.float32)
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            (size, size), Image.BICUBIC), dtype=np.float32) / 255
    return t[..., None] * a + (1 - t[..., None]) * b


def _clutter(rng: np.random.Generator, size: int, bg: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """A background of random lines and blobs in colours between the glyph's and the paper's."""
    img = Image.new("RGB", (size, size), tuple(int(255 * c) for c in bg))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(4, 9)):
        mix = rng.uniform(0.15, 0.6)
        colour = tuple(int(255 * c) for c in (mix * rng.random(3) + (1 - mix) * bg))
        x0, y0, x1, y1 = (rng.uniform(-0.2, 1.2, 4) * size).tolist()
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 3)))
        else:
            draw.ellipse((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=colour)
    return np.asarray(img, dtype=np.float32) / 255


def render(text: str, font: str, domain: str, rng: np.random.Generator,
           size: int = 24, rotation: float = 0.0) -> np.ndarray:
    """One image (size x size x 3, uint8) of ``text`` in ``font`` and ``domain``, turned by
    ``rotation`` degrees beyond the random jitter."""
    big = size * SUPERSAMPLE
    glyph_px = int(big * rng.uniform(0.55, 0.8))
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    f = _font(font, glyph_px)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
    w, h = right - left, bottom - top
    scale = min(1.0, 0.85 * big / max(w, h, 1))
    if scale < 1.0:  # wide glyphs (arrows, sums) are shrunk to fit
        f = _font(font, max(6, int(glyph_px * scale)))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
        w, h = right - left, bottom - top
    shift = rng.uniform(-0.08, 0.08, 2) * big
    draw.text(((big - w) / 2 - left + shift[0], (big - h) / 2 - top + shift[1]), text,
              font=f, fill=255)
    mask = mask.rotate(float(rng.uniform(-15, 15)) + rotation, resample=Image.BICUBIC)
    if domain == "dots":
        # Ink only at the points of a coarse grid that fall inside the strokes, as round dots.
        pitch = float(rng.uniform(2.0, 2.6)) * SUPERSAMPLE
        offset = rng.uniform(0, pitch, 2)
        # thickened first, so that thin strokes still meet the grid
        inside = np.asarray(mask.filter(ImageFilter.MaxFilter(SUPERSAMPLE)), np.uint8)
        dots = Image.new("L", (big, big), 0)
        pen = ImageDraw.Draw(dots)
        radius = 0.36 * pitch
        for cy in np.arange(offset[1], big, pitch):
            for cx in np.arange(offset[0], big, pitch):
                if inside[int(cy), int(cx)] > 127:
                    pen.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
        mask = dots
    if domain == "outline":
        # A ring just outside the strokes: the glyph's contour, hollow inside.
        grown = np.asarray(mask.filter(ImageFilter.MaxFilter(2 * SUPERSAMPLE + 1)), np.int16)
        mask = Image.fromarray((grown - np.asarray(mask, np.int16)).clip(0, 255).astype(np.uint8))
    alpha = np.asarray(mask.resize((size, size), Image.BOX), dtype=np.float32)[..., None] / 255
    fg, bg = _colours(rng)
    if domain == "texture":
        ink = _texture(rng, size, fg, np.clip(1 - fg + rng.uniform(-0.2, 0.2, 3), 0, 1))
        paper = np.broadcast_to(bg, (size, size, 3))
    elif domain == "clutter":
        ink, paper = np.broadcast_to(fg, (size, size, 3)), _clutter(rng, size, bg, fg)
    else:
        ink, paper = np.broadcast_to(fg, (size, size, 3)), np.broadcast_to(bg, (size, size, 3))
    img = alpha * ink + (1 - alpha) * paper
    img = img + rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def generate(task: str, split: str, count: int, seed: int = 0, domain: str | None = None,
             size: int = 24, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (N x 3 x size x size uint8) and labels (N int64) of a glyph task.

    Labels cycle through the classes, so every class has the same number of images (+-1).
    ``domain=None`` samples the task's training domains; a name fixes the domain.
    Image ``i`` depends only on (seed, task, split, domain, i): ``start`` generates a slice.
    """
    spec = specs()[task]
    key = [seed, _stable_int(task), _stable_int(split), _stable_int(domain or "*")]
    n_classes = len(spec.classes)
    images = np.empty((count, 3, size, size), np.uint8)
    labels = np.empty(count, np.int64)
    for j, i in enumerate(range(start, start + count)):
        rng = np.random.default_rng(key + [i])
        label = i % n_classes
        dom = domain or spec.domains[rng.integers(len(spec.domains))]
        if spec.kind == "font":
            font, text = spec.fonts[label], spec.chars[rng.integers(len(spec.chars))]
        elif spec.kind == "group":
            group = spec.groups[label]
            font = group[rng.integers(len(group))]
            text = spec.chars[rng.integers(len(spec.chars))]
        else:
            font, text = spec.fonts[rng.integers(len(spec.fonts))], spec.classes[label]
        images[j] = render(text, font, dom, rng, size, spec.rotation).transpose(2, 0, 1)
        labels[j] = label
    return images, labels
