"""Prompt templates that turn a class name into a caption, e.g. "a photo of a {}."."""

# The 80 prompts of CLIP's ImageNet prompt ensemble (Radford et al., 2021), used for zero-shot
# heads (WiSE-FT) and for sampling FLYP's class prompts.
OPENAI_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# The single prompt of WiSE-FT's "simple" zero-shot head.
SIMPLE_TEMPLATES = ("a photo of a {}.",)

# A handful of plain prompts: enough variety for FLYP on the embedded world, cheap to embed.
FEW_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a {}.",
    "a photo of the {}.",
)

# The camera-trap prompts WiSE-FT and FLYP use for iWildCam.
IWILDCAM_TEMPLATES = ("a photo of {}.", "{} in the wild.")

# The satellite prompts WiSE-FT and FLYP use for FMoW, less their two "a"/"an"-per-class
# variants (a template here is one format string for every class).
FMOW_TEMPLATES = (
    "satellite photo of a {}.",
    "aerial photo of a {}.",
    *(f"{view} photo of a {{}} in {region}." for region in
      ("asia", "africa", "the americas", "europe", "oceania") for view in ("satellite", "aerial")),
    "a photo of a {}.",
    "{}.",
)

TEMPLATES = {
    "openai_imagenet": OPENAI_IMAGENET_TEMPLATES,
    "simple": SIMPLE_TEMPLATES,
    "few": FEW_TEMPLATES,
    "iwildcam": IWILDCAM_TEMPLATES,
    "fmow": FMOW_TEMPLATES,
}


def get_templates(name: str) -> tuple[str, ...]:
    """Returns the template set called `name` (configs name template sets by string)."""
    if name not in TEMPLATES:
        raise ValueError(f"Unknown template set {name!r}; valid names: {sorted(TEMPLATES)}.")
    return TEMPLATES[name]
