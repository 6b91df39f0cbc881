"""The settings of a HISTEX model: one object, three presets (the variants)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from histex._device import PRECISIONS
from histex._validation import check_bool, check_choice, check_int, check_number, check_seed
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
        ``"auto"`` (bfloat16 where the hardware computes it natively, else float32), ``"float32"`` or
        ``"bfloat16"``.
    feature_components
        Principal axes of the standardised image features to keep (``None``: every channel).
    feature_scaling
        ``"global"`` (default): every section's features are standardised with the statistics of all training
        sections together over their tissue, which a new section then shares; ``"section"``: each section's with
        its own statistics, which also removes a shift of stain or scanner between slides but moves the features
        of one cell type differently on sections of different composition (the transfer benchmark compares
        them).
    positions
        Give the network each bin's position in its section (two channels). A position says where a bin lies on
        one slide, nothing about another: a model meant for other sections may leave them out.
    he_only
        How the model learns to predict a slide without spots (an H&E-only slide): ``"image_states"``
        (default): an ensemble of image-only networks (the ``"image_only"`` variant's) is trained beside the
        fused one and predicts such slides; ``"withheld"``: a share ``context_withheld`` of the fused network's
        training windows see no expression, so that it also learns each bin from its image alone; ``"none"``: the
        model needs spots (what :func:`histex.tl.super_resolve` trains). The transfer benchmark compares
        them.
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
        where the cells are instead of the network's noise. Off by default: on sections of few spots it pushes
        genes the image does show towards the shared shape (the benchmark page gives the figures).
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
        check_choice("variant", variant, PRESETS)
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
        def set_(name, value):
            object.__setattr__(self, name, value)

        for name in ("use_context", "nonlinear", "carry_context", "context_skip", "positions", "match_spots",
                     "match_shapes"):  # fmt: skip
            set_(name, check_bool(name, getattr(self, name)))
        for name, minimum in (("epochs", 1), ("n_states", 1), ("patience", 1), ("stride", 1), ("k_context", 1),
                              ("dim", 1), ("heads", 1)):  # fmt: skip
            set_(name, check_int(name, getattr(self, name), minimum=minimum))
        set_("batch_size", check_int("batch_size", self.batch_size, none_ok=True))
        set_("feature_components", check_int("feature_components", self.feature_components, none_ok=True))
        set_("seed", check_seed(self.seed))
        set_("lr", check_number("lr", self.lr, minimum=0, above=True))
        for name in ("holdout", "context_withheld", "fusion_dropout"):
            set_(name, check_number(name, getattr(self, name), minimum=0, maximum=1, below=True))
        check_choice("context_dropout", self.context_dropout, ("self", "none"))
        check_choice("targets", self.targets, TARGETS)
        check_choice("he_only", self.he_only, HE_ONLY)
        check_choice("feature_scaling", self.feature_scaling, FEATURE_SCALINGS)
        check_choice("precision", self.precision, PRECISIONS)
        if self.precision == "float16":
            raise ValueError("precision='float16' cannot train (its gradients underflow); use 'bfloat16' or 'float32'.")
        if len(self.hidden) < 1 or min(self.hidden) < 1:
            raise ValueError(f"hidden needs at least one layer, each of positive width; got {self.hidden}.")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads}).")


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
