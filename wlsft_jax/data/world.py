"""The embedded world: procedurally rendered image–caption pairs in several visual domains.

Every example is a pure function of `(split, domain, index, seed)`: a numpy Generator seeded with
those numbers draws a scene (shape, colour, size, count, position, background), a caption from a
small grammar, and the domain's rendering noise. Nothing is downloaded or written to disk.

This module holds the world's tables, scenes, captions and sources; `world_render` draws a
scene's pixels (signed distance fields and the domains' styles).
"""
import dataclasses
import functools

import numpy as np

from wlsft_jax.data import world_render

SPLITS = ("train", "val", "test")
DOMAINS = ("photo", "sketch", "painting", "clipart", "neon")
CLASSES = ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "hexagon",
           "crescent", "arrow", "ring")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 224

# Caption words for each class: (singular, plural) synonyms; the class name comes first.
SHAPE_WORDS = {
    "circle": (("circle", "circles"), ("disc", "discs"), ("round dot", "round dots")),
    "square": (("square", "squares"), ("box", "boxes")),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"), ("five pointed star", "five pointed stars")),
    "cross": (("cross", "crosses"), ("plus sign", "plus signs")),
    "heart": (("heart", "hearts"), ("love heart", "love hearts")),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses")),
    "hexagon": (("hexagon", "hexagons"), ("six sided polygon", "six sided polygons")),
    "crescent": (("crescent", "crescents"), ("crescent moon", "crescent moons")),
    "arrow": (("arrow", "arrows"), ("pointer", "pointers")),
    "ring": (("ring", "rings"), ("donut", "donuts"), ("hoop", "hoops")),
}
# Words standing in for the shape when a caption leaves it out (weak supervision is noisy).
GENERIC_SHAPE_WORDS = (("shape", "shapes"), ("object", "objects"), ("figure", "figures"),
                       ("symbol", "symbols"))
SHAPE_OMITTED_PROBABILITY = 0.15

# Object colours: name -> (RGB in [0, 1], caption synonyms with the name first).
COLOURS = {
    "red": ((0.86, 0.12, 0.12), ("red", "crimson", "scarlet")),
    "orange": ((0.96, 0.55, 0.10), ("orange",)),
    "yellow": ((0.95, 0.85, 0.15), ("yellow", "golden")),
    "green": ((0.15, 0.66, 0.22), ("green", "emerald")),
    "blue": ((0.15, 0.32, 0.88), ("blue", "azure")),
    "purple": ((0.56, 0.20, 0.72), ("purple", "violet")),
    "pink": ((0.96, 0.46, 0.72), ("pink",)),
    "brown": ((0.50, 0.30, 0.14), ("brown",)),
}
COLOUR_WORDS = {name: words for name, (_, words) in COLOURS.items()}

# Backgrounds each domain may use: name -> RGB. The name can appear in captions.
BACKGROUNDS = {
    "photo": {"gray": (0.50, 0.50, 0.50), "beige": (0.84, 0.78, 0.64), "white": (0.90, 0.90, 0.88),
              "blue": (0.50, 0.68, 0.90), "green": (0.40, 0.58, 0.30), "black": (0.10, 0.10, 0.11)},
    "sketch": {"white": (0.96, 0.96, 0.94), "cream": (0.96, 0.92, 0.80)},
    "painting": {"beige": (0.86, 0.76, 0.58), "blue": (0.35, 0.50, 0.80),
                 "green": (0.45, 0.62, 0.35), "gray": (0.55, 0.55, 0.52)},
    "clipart": {"white": (1.0, 1.0, 1.0), "yellow": (1.0, 0.95, 0.70), "blue": (0.75, 0.88, 1.0),
                "pink": (1.0, 0.85, 0.90), "green": (0.80, 0.95, 0.80)},
    "neon": {"black": (0.02, 0.02, 0.03), "navy": (0.03, 0.04, 0.14)},
}
MIN_COLOUR_CONTRAST = 0.35  # Euclidean RGB distance between object and background.

# Count -> probability and caption words ("a" becomes "an" before a vowel).
COUNT_PROBABILITIES = {1: 0.5, 2: 0.3, 3: 0.2}
COUNT_WORDS = {1: ("a", "one", "a single"), 2: ("two", "a pair of"), 3: ("three",)}

# Object radius as a fraction of the image side, and caption synonyms.
SIZES = {
    "small": ((0.10, 0.13), ("small", "little", "tiny")),
    "medium": ((0.16, 0.19), ("medium", "medium sized")),
    "large": ((0.24, 0.30), ("large", "big", "huge")),
}
SIZES_FOR_COUNT = {1: ("small", "medium", "large"), 2: ("small", "medium"), 3: ("small",)}
SIZE_MENTIONED_PROBABILITY = 0.3

# Positions: name -> (x, y) centre in [0, 1] image coordinates (y down), and caption phrases.
# A group of objects is laid out along a row (top/center/bottom) or a column (left/right).
POSITIONS = {
    "center": ((0.5, 0.5), ("in the center", "in the middle")),
    "top": ((0.5, 0.25), ("at the top", "near the top")),
    "bottom": ((0.5, 0.75), ("at the bottom", "near the bottom")),
    "left": ((0.25, 0.5), ("on the left", "on the left side")),
    "right": ((0.75, 0.5), ("on the right", "on the right side")),
    "top left": ((0.27, 0.27), ("in the top left corner", "at the top left")),
    "top right": ((0.73, 0.27), ("in the top right corner", "at the top right")),
    "bottom left": ((0.27, 0.73), ("in the bottom left corner", "at the bottom left")),
    "bottom right": ((0.73, 0.73), ("in the bottom right corner", "at the bottom right")),
}
GROUP_POSITIONS = ("center", "top", "bottom", "left", "right")
MAX_ROTATION_DEGREES = 15.0

# How captions name each domain.
DOMAIN_WORDS = {
    "photo": ("photo", "photograph", "picture", "snapshot"),
    "sketch": ("pencil sketch", "sketch", "pencil drawing", "line drawing"),
    "painting": ("painting", "oil painting", "watercolor"),
    "clipart": ("clipart", "cartoon", "flat illustration", "icon"),
    "neon": ("neon sign", "neon light", "glowing sign"),
}
# Caption templates. {np}: noun phrase, {where}: position and/or background (may be empty),
# {dom}: domain noun with its article, {dom_noun}: domain noun alone, {be}: "is" or "are".
CAPTION_TEMPLATES = (
    "{np}{where}",
    "there {be} {np}{where}",
    "{dom} of {np}{where}",
    "{dom} showing {np}{where}",
    "{dom} with {np}{where}",
    "this {dom_noun} shows {np}{where}",
)
# Captions vary in detail, as alt-text does: the shape is named (unless omitted) and the count
# given; every other attribute only sometimes. With every attribute always named (as before),
# colour, count and position told a caption apart within a batch and the pretrained CLIP
# learned shape barely above chance (12.6 % zero-shot at 600 steps).
COLOUR_MENTIONED_PROBABILITY = 0.5
POSITION_MENTIONED_PROBABILITY = 0.4
BACKGROUND_MENTIONED_PROBABILITY = 0.25
BACKGROUND_PHRASES = ("on a {} background", "against a {} background")


def _words_of(phrases):
    return {word for phrase in phrases for word in phrase.replace("{}", "").split()}


def _grammar_words():
    """Every word a caption can contain, read from the tables the grammar draws from."""
    words = {"an", "is", "are"}
    words |= _words_of(p for pairs in SHAPE_WORDS.values() for pair in pairs for p in pair)
    words |= _words_of(p for pair in GENERIC_SHAPE_WORDS for p in pair)
    words |= _words_of(w for _, synonyms in COLOURS.values() for w in synonyms)
    words |= _words_of(name for backgrounds in BACKGROUNDS.values() for name in backgrounds)
    words |= _words_of(w for phrases in COUNT_WORDS.values() for w in phrases)
    words |= _words_of(w for _, synonyms in SIZES.values() for w in synonyms)
    words |= _words_of(p for _, phrases in POSITIONS.values() for p in phrases)
    words |= _words_of(w for nouns in DOMAIN_WORDS.values() for w in nouns)
    words |= _words_of(BACKGROUND_PHRASES)
    words |= _words_of(t.format(np="", where="", dom="", dom_noun="", be="")
                       for t in CAPTION_TEMPLATES)
    return tuple(sorted(words))


VOCABULARY = _grammar_words()


@dataclasses.dataclass(frozen=True)
class Scene:
    """What one example shows: the attributes a caption describes, plus the exact layout."""
    domain: str
    label: int
    colour: str
    size: str
    count: int
    position: str
    background: str
    centres: tuple  # (x, y) per object, in [0, 1] image coordinates.
    radius: float  # Object radius as a fraction of the image side.
    angles: tuple  # Rotation per object, radians.

    @property
    def shape(self) -> str:
        return CLASSES[self.label]

    @property
    def colour_rgb(self) -> tuple:
        """The objects' RGB in [0, 1], as `world_render` paints them."""
        return COLOURS[self.colour][0]

    @property
    def background_rgb(self) -> tuple:
        """The background's RGB in [0, 1], as `world_render` paints it."""
        return BACKGROUNDS[self.domain][self.background]


# ----------------------------------------------------------------------------------------------
# Validation and seeding.


def _check_choice(value, choices, what):
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}; valid choices: {', '.join(choices)}.")


def _check_index(index, what="index"):
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {index!r}.")


def _check_image_size(image_size):
    if (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
        or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE):
        raise ValueError(f"image_size must be an integer from {MIN_IMAGE_SIZE} to "
                         f"{MAX_IMAGE_SIZE}, got {image_size!r}.")


def _example_rng(index, domain, split, seed):
    """The one Generator an example draws everything from, after checking its arguments."""
    _check_choice(domain, DOMAINS, "domain")
    _check_choice(split, SPLITS, "split")
    _check_index(index)
    _check_index(seed, "seed")
    key = [int(seed), SPLITS.index(split), DOMAINS.index(domain), int(index)]
    return np.random.default_rng(key)


def _pick(rng, choices):
    return choices[int(rng.random() * len(choices))]


# ----------------------------------------------------------------------------------------------
# Scenes and captions.


@functools.cache
def _colours_visible_on(domain, background):
    background_rgb = np.array(BACKGROUNDS[domain][background])
    return tuple(name for name, (rgb, _) in COLOURS.items()
                 if name != background
                 and np.linalg.norm(np.array(rgb) - background_rgb) > MIN_COLOUR_CONTRAST)


def _pick_count(rng):
    """A number of objects, drawn with COUNT_PROBABILITIES."""
    draw = rng.random()
    for count, probability in COUNT_PROBABILITIES.items():
        if draw < probability:
            return count
        draw -= probability
    return max(COUNT_PROBABILITIES)  # Only reached if the probabilities sum to a hair under 1.


def _draw_scene(rng, domain):
    label = int(rng.random() * len(CLASSES))
    background = _pick(rng, tuple(BACKGROUNDS[domain]))
    colour = _pick(rng, _colours_visible_on(domain, background))
    count = _pick_count(rng)
    size = _pick(rng, SIZES_FOR_COUNT[count])
    low, high = SIZES[size][0]
    radius = low + (high - low) * rng.random()
    position = _pick(rng, tuple(POSITIONS) if count == 1 else GROUP_POSITIONS)
    anchor_x, anchor_y = POSITIONS[position][0]
    jitter = 0.08 * (rng.random((count, 2)) - 0.5)
    if count == 1:
        centres = [(anchor_x, anchor_y)]
    else:
        spread = [0.08 + 0.84 * (i + 0.5) / count for i in range(count)]  # Evenly, edge to edge.
        along_row = position in ("center", "top", "bottom")
        centres = [(s, anchor_y) if along_row else (anchor_x, s) for s in spread]
        jitter[:, 0 if along_row else 1] *= 0.25  # Neighbours at most touch.
    centres = tuple((min(max(x + float(dx), radius), 1 - radius),
                     min(max(y + float(dy), radius), 1 - radius))
                    for (x, y), (dx, dy) in zip(centres, jitter))
    angles = np.deg2rad(MAX_ROTATION_DEGREES) * (2 * rng.random(count) - 1)
    return Scene(domain=domain, label=label, colour=colour, size=size, count=count,
                 position=position, background=background, centres=centres, radius=radius,
                 angles=tuple(angles.tolist()))


def _with_article(phrase):
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _caption(scene, rng):
    """A sentence from the grammar. It always gives the count, and the shape unless
    SHAPE_OMITTED_PROBABILITY strikes; colour, size, position and background each with their
    *_MENTIONED_PROBABILITY."""
    shape_words = (GENERIC_SHAPE_WORDS if rng.random() < SHAPE_OMITTED_PROBABILITY
                   else SHAPE_WORDS[scene.shape])
    singular, plural = _pick(rng, shape_words)
    noun = singular if scene.count == 1 else plural
    adjectives = []
    if rng.random() < COLOUR_MENTIONED_PROBABILITY:
        adjectives.append(_pick(rng, COLOUR_WORDS[scene.colour]))
    if rng.random() < SIZE_MENTIONED_PROBABILITY:
        adjectives.insert(0, _pick(rng, SIZES[scene.size][1]))
    noun_phrase = " ".join(adjectives + [noun])
    count_word = _pick(rng, COUNT_WORDS[scene.count])
    if count_word == "a":
        noun_phrase = _with_article(noun_phrase)
    else:
        noun_phrase = f"{count_word} {noun_phrase}"
    where = ""
    if rng.random() < POSITION_MENTIONED_PROBABILITY:
        where += " " + _pick(rng, POSITIONS[scene.position][1])
    if rng.random() < BACKGROUND_MENTIONED_PROBABILITY:
        where += " " + _pick(rng, BACKGROUND_PHRASES).format(scene.background)
    domain_noun = _pick(rng, DOMAIN_WORDS[scene.domain])
    return _pick(rng, CAPTION_TEMPLATES).format(
        np=noun_phrase, where=where, dom=_with_article(domain_noun), dom_noun=domain_noun,
        be="is" if scene.count == 1 else "are")


# ----------------------------------------------------------------------------------------------
# Public entry points.


def scene(index, *, domain, split="train", seed=0) -> Scene:
    """The attributes and layout of example `index` (what `example` renders and describes)."""
    return _draw_scene(_example_rng(index, domain, split, seed), domain)


def example(index, *, domain, split="train", image_size=32, seed=0) -> dict:
    """Example `index` of `domain` in `split`: dict(image=uint8[H, W, 3], label, caption, domain).

    The same arguments always give the same pixels and caption; splits never share a seed stream.
    """
    _check_image_size(image_size)
    rng = _example_rng(index, domain, split, seed)
    drawn = _draw_scene(rng, domain)
    caption = _caption(drawn, rng)
    image = world_render.render(drawn, image_size, rng)
    pixels = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return dict(image=pixels, label=drawn.label, caption=caption, domain=domain)


class WorldSource:
    """A grain RandomAccessDataSource over the examples of several domains of a split.

    Domains are interleaved in a fixed cycle in which domain d appears `domain_weights[d]` times
    (default once each), so any contiguous stretch mixes the domains in those proportions; each
    domain contributes `weight * examples_per_domain` distinct examples. With equal weights,
    record i comes from domain `domains[i % len(domains)]`, example `i // len(domains)`.
    `domain` in a record indexes `DOMAINS`. A single domain may be passed as a plain string.
    """

    def __init__(self, *, split, domains, examples_per_domain, image_size=32, seed=0,
                 domain_weights=None):
        domains = (domains,) if isinstance(domains, str) else tuple(domains)
        if not domains:
            raise ValueError(f"domains must name at least one of: {', '.join(DOMAINS)}.")
        for domain in domains:
            _check_choice(domain, DOMAINS, "domain")
        if len(set(domains)) < len(domains):
            raise ValueError(f"domains {domains} repeat a domain; weight it with domain_weights.")
        _check_choice(split, SPLITS, "split")
        _check_image_size(image_size)
        _check_index(seed, "seed")
        if isinstance(examples_per_domain, bool) or not isinstance(
            examples_per_domain, (int, np.integer)) or examples_per_domain < 1:
            raise ValueError(f"examples_per_domain must be a positive integer, got "
                             f"{examples_per_domain!r}.")
        weights = (1,) * len(domains) if domain_weights is None else tuple(domain_weights)
        if len(weights) != len(domains) or any(
                isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1
                for w in weights):
            raise ValueError(f"domain_weights={weights} must be one positive integer per domain "
                             f"of {domains}.")
        self.split = split
        self.domains = domains
        self.domain_weights = tuple(int(w) for w in weights)
        self.examples_per_domain = int(examples_per_domain)
        self.image_size = int(image_size)
        self.seed = int(seed)
        # The cycle: (domain, its occurrence within the cycle), round-robin over the domains
        # that still have occurrences left, so heavy domains are spread through the cycle.
        self._cycle = [(d, k) for k in range(max(weights))
                       for d, w in zip(domains, weights) if k < w]

    def __len__(self) -> int:
        return len(self._cycle) * self.examples_per_domain

    def __getitem__(self, record_key):
        _check_index(record_key, "record key")
        if record_key >= len(self):
            raise ValueError(f"record key {record_key} is out of range; valid keys: 0 to "
                             f"{len(self) - 1}.")
        cycle, slot = divmod(int(record_key), len(self._cycle))
        domain, occurrence = self._cycle[slot]
        index = cycle * self.domain_weights[self.domains.index(domain)] + occurrence
        record = example(index, domain=domain, split=self.split, image_size=self.image_size,
                         seed=self.seed)
        return dict(image=record["image"], label=np.int32(record["label"]),
                    caption=record["caption"], domain=np.int32(DOMAINS.index(domain)))

    def __repr__(self) -> str:
        weights = ("" if set(self.domain_weights) == {1}
                   else f", domain_weights={self.domain_weights}")
        return (f"WorldSource(split={self.split!r}, domains={self.domains!r}{weights}, "
                f"examples_per_domain={self.examples_per_domain}, image_size={self.image_size}, "
                f"seed={self.seed})")
