"""The settings of a HISTEX model: one object, three presets (the variants)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from histex.model.fit import FitConfig
from histex.model.targets import TARGETS

_PAPER_MLP = (1024, 512, 512, 512)
_SMALL_MLP = (256, 256, 256, 256)  # as accurate as the paper's widths on texture features, three times faster
FEATURE_SCALINGS = ("section", "global")
HE_ONLY = ("withheld", "image_states", "none")


@dataclass(frozen=True)
class HistexSettings:
    """What a HISTEX model is and how it trains. The defaults are the ``"histex"`` variant's.

    The variants are presets of these settings (:meth:`preset`); every field can be overridden. The choices of
    ``"histex"`` were measured with ``histex bench`` (see the benchmark page).

    Attributes
    ----------
    use_context
        Fuse the measured expression of nearby spots (``False``: the image-only iStar design).
    nonlinear
        GELU between the MLP's layers (the published network has none).
    hidden
        Widths of the MLP after fusion.
    stride
        Step in bins between prediction windows; the window (7 bins) tiles the grid, smaller overlaps and averages.
    context_dropout
        ``"self"``: at training, a spot's own measurement (and the midpoints made from it) is left out of its
        context, so that the network must learn from the image; ``"none"``.
    targets
        ``"minmax"`` (paper) or ``"log1p"`` scaling of the counts.
    carry_context
        The fusion blocks pass the gene tokens' values through.
    context_skip
        The MLP also sees the mean of the gene tokens.
    fusion_dropout
        Share of training windows whose fused tokens are withheld from the MLP.
    epochs
        Most passes over the spots per ensemble state.
    n_states
        Independently seeded networks in the ensemble.
    batch_size
        Spots per step; ``None``: ``min(32, n_spots // 16)``.
    lr
        Adam learning rate.
    k_context
        Context points (gene tokens) per window.
    holdout, patience
        Share of spots each state holds out, and epochs without improvement on them before training stops
        (``holdout=0``: no stopping rule).
    precision
        ``"auto"`` (bfloat16 where the hardware computes it natively), ``"float32"`` or ``"bfloat16"``.
    feature_components
        Principal axes of the standardised image features to keep (``None``: every channel).
    feature_scaling
        ``"global"`` (default): every section's features are standardised with the statistics of all training
        sections together over their tissue, which a new section then shares; ``"section"``: each section's with
        its own statistics, which also removes a shift of stain or scanner between slides but moves the features
        of one cell type differently on sections of different composition. On the transfer benchmark
        ``"global"`` predicted an H&E-only HGSC square 0.049 better (0.579 against 0.530) and was as accurate
        with spots; on toy sections whose stains differ by up to 20% the two were within 0.005.
    positions
        Give the network each bin's position in its section (two channels). A position says where a bin lies on
        one slide, nothing about another: a model meant for other sections may leave them out.
    he_only
        How the model learns to predict a slide without spots (an H&E-only slide): ``"image_states"``
        (default): an ensemble of image-only networks (the ``"image_only"`` variant's) is trained beside the
        fused one and predicts such slides; ``"withheld"``: a share ``context_withheld`` of the fused network's
        training windows see no expression, so that it also learns each bin from its image alone; ``"none"``: the
        model needs spots (what :func:`histex.tl.super_resolve` trains). On the transfer benchmark
        ``"image_states"`` was the more accurate from the image alone on the toy sections, ``"withheld"`` on the
        HGSC squares; ``"image_states"`` costs no accuracy with spots.
    context_withheld
        Share of training windows without expression, for ``he_only="withheld"``.
    match_spots
        Rescale the predicted bins, gene by gene, so that each spot's disk sums to what the spot measured, and the
        bins between disks by the ratios of the spots around them (:mod:`histex.model.matching`): the image sets
        the shape within a spot, the spots the level. Only where the section's spots are used.
    match_shapes
        With ``match_spots``, first give each gene the shape within a spot that best predicts spots it did not see:
        its own predicted pattern, the pattern all genes share, none, or a mixture
        (:class:`histex.model.matching.ShapeChoice`). A gene the image cannot tell (a clone, a gradient) takes
        where the cells are instead of the network's noise. Off by default: it lifted the bins of the benchmark's
        clone and gradient genes, but cost 0.035 per cell on the HGSC nest, whose 48 spots push genes the image
        does show towards the shared shape.
    dim, heads
        Embedding size and attention heads of the fusion blocks.
    seed
        Seed of the first ensemble state (state ``i`` uses ``seed + i``).
    """

    use_context: bool = True
    nonlinear: bool = True
    hidden: tuple[int, ...] = _SMALL_MLP
    stride: int = 3
    context_dropout: str = "self"
    targets: str = "minmax"
    carry_context: bool = True
    context_skip: bool = True
    fusion_dropout: float = 0.5
    epochs: int = 60
    n_states: int = 5
    batch_size: int | None = None
    lr: float = 1e-4
    k_context: int = 5
    holdout: float = 0.0
    patience: int = 10
    precision: str = "auto"
    feature_components: int | None = None
    feature_scaling: str = "global"
    positions: bool = True
    he_only: str = "image_states"
    context_withheld: float = 0.25
    match_spots: bool = True
    match_shapes: bool = False
    dim: int = 128
    heads: int = 8
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(w) for w in self.hidden))
        self._validate()

    @classmethod
    def preset(cls, variant: str = "histex", **overrides) -> HistexSettings:
        """The settings of a variant (:data:`PRESETS`), with ``overrides`` (fields; ``None`` values are ignored)."""
        if variant not in PRESETS:
            raise ValueError(f"variant must be one of {list(PRESETS)}, got {variant!r}.")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"Unknown settings: {sorted(unknown)}; valid: {sorted(f.name for f in fields(cls))}.")
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**PRESETS[variant], **given})

    def replace(self, **changes) -> HistexSettings:
        """A copy with ``changes`` (checked as the constructor checks them)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain values (JSON): tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> HistexSettings:
        """Settings from :meth:`to_dict`'s output; keys of other versions are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def fit_config(self, *, window: int, **extra) -> FitConfig:
        """The network and training settings of one fit, for :func:`histex.model.train` and
        :func:`histex.model.predict`. ``extra``: device, show_progress, predict_batch_size.
        """
        shared = {f.name for f in fields(FitConfig)} - {"window", "stride", "context_withheld"}
        values = {k: v for k, v in asdict(self).items() if k in shared}
        withheld = self.context_withheld if self.he_only == "withheld" and self.use_context else 0.0
        return FitConfig(
            window=window, stride=min(self.stride, window), context_withheld=withheld, **{**values, **extra}
        )

    def image_only(self) -> HistexSettings:
        """The image-only states of ``he_only="image_states"``: the ``"image_only"`` variant with this model's
        MLP, training and seeds.
        """
        keep = ("hidden", "nonlinear", "targets", "epochs", "n_states", "batch_size", "lr", "holdout", "patience",
                "precision", "feature_components", "feature_scaling", "positions", "seed")  # fmt: skip
        return HistexSettings.preset("image_only", **{k: getattr(self, k) for k in keep}, he_only="none")

    def _validate(self) -> None:
        checks = [
            (self.context_dropout in ("self", "none"), f"context_dropout must be 'self' or 'none', got {self.context_dropout!r}."),
            (self.targets in TARGETS, f"targets must be one of {TARGETS}, got {self.targets!r}."),
            (0 <= self.holdout < 1, f"holdout must be in [0, 1), got {self.holdout}."),
            (int(self.patience) == self.patience and self.patience >= 1, f"patience must be a positive number of epochs, got {self.patience}."),
            (int(self.epochs) == self.epochs and self.epochs >= 1, f"epochs must be a positive integer, got {self.epochs}."),
            (int(self.n_states) == self.n_states and self.n_states >= 1, f"n_states must be a positive integer, got {self.n_states}."),
            (self.he_only in HE_ONLY, f"he_only must be one of {HE_ONLY}, got {self.he_only!r}."),
            (0 <= self.context_withheld < 1, f"context_withheld must be in [0, 1), got {self.context_withheld}."),
            (self.feature_scaling in FEATURE_SCALINGS, f"feature_scaling must be one of {FEATURE_SCALINGS}, got {self.feature_scaling!r}."),
            (0 <= self.fusion_dropout < 1, f"fusion_dropout must be in [0, 1), got {self.fusion_dropout}."),
            (self.stride >= 1, f"stride must be a positive number of bins, got {self.stride}."),
            (self.k_context >= 1, f"k_context must be at least 1, got {self.k_context}."),
            (self.batch_size is None or self.batch_size >= 1, f"batch_size must be positive, got {self.batch_size}."),
            (len(self.hidden) >= 1, "hidden needs at least one layer width."),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.feature_components is not None and self.feature_components < 1:
            raise ValueError(f"feature_components must be positive or None, got {self.feature_components}.")


#: What each variant sets; the rest are the defaults of :class:`HistexSettings`.
PRESETS: dict[str, dict] = {
    # Our default: nonlinear MLP; the fusion blocks carry the measured expression through and the MLP also sees it
    # directly; a spot never sees its own measurement at training, and half of the windows are trained without
    # the fused tokens (so that the MLP learns each bin from its image); overlapping prediction windows.
    "histex": {},
    # The iStar design: a per-bin MLP on image features, same disk loss, no expression context.
    "image_only": {
        "use_context": False,
        "stride": 7,
        "context_dropout": "none",
        "carry_context": False,
        "context_skip": False,
        "fusion_dropout": 0.0,
        "match_spots": False,
    },
    # The published setting (linear MLP, non-overlapping 7 x 7 blocks, min-max targets), with the corrections kept.
    "paper": {
        "nonlinear": False,
        "stride": 7,
        "context_dropout": "none",
        "carry_context": False,
        "context_skip": False,
        "fusion_dropout": 0.0,
        "hidden": _PAPER_MLP,
        "epochs": 500,
        "match_spots": False,
    },
}
