"""Typed run configuration: pydantic models, YAML loading, dotted overrides and cross-field checks.

A config has five sections: `data`, `model`, `geco`, `training`, `eval`. Paper symbols:
K slots, D latent size, L stochastic (bottom-up) layers, I refinement steps.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from emorl_cli.errors import ConfigError, EmorlError

# Number of mask entities (background included) in each known dataset's ground truth.
DATASET_ENTITIES = {"tetrominoes": 4, "multi_dsprites": 6, "clevr6": 7, "clevr6_128": 11, "clevrtex": 11}
# A dataset written by `emorl data import`: its entity count is whatever the file holds (checked when opened).
CUSTOM_DATASET = "custom"
# ClevrTex variants (Karazija et al., 2021); each is a folder `clevrtex_{variant}` of PNGs.
CLEVRTEX_VARIANTS = ("full", "pbg", "vbg", "grassbg", "camo", "outd")
# CLEVR crop box (left, top, right, bottom) used by the paper: 192x192 from the 240x320 frame.
CLEVR_CROP_BOX = (64, 29, 256, 221)
# Image sizes the "big" decoder produces: four stride-2 transposed convolutions from a 6x6 grid.
BIG_DECODER_SIZES = (96,)
# Upper bounds of the model's sizes: far above anything the paper uses, low enough that a typo (K=100000)
# is caught when the config is read rather than after gigabytes of allocation. (limit, why)
SIZE_LIMITS: dict[str, tuple[int, str]] = {
    "K": (64, "slots; the paper uses 4 to 11, and time and memory grow with K"),
    "z_size": (1024, "latent dimensions per slot; the paper uses 64"),
    "stochastic_layers": (16, "bottom-up layers; the paper uses 3"),
    "refinement_iters": (64, "refinement steps; the paper uses at most 3, and each one decodes every slot again"),
    "image_side": (1024, "pixels per side; the paper uses at most 128, and memory grows with H·W"),
}
# Images per batch (training, evaluation, --batch-size): far above what fits a GPU at the paper's sizes;
# memory is estimated as well, this only stops a typo before any estimate is needed.
BATCH_MAX = 65_536
# DataLoader worker processes: one per core of a large machine; a typo (100000) would fork until it fails.
WORKERS_MAX = 256
# Seeds: what numpy's legacy generators, torch and the .h5 attributes all accept (an unsigned 32-bit integer).
SEED_MAX = 2**32 - 1
# log σ of the image likelihood: σ from about 4.5e-5 to 7.4 on pixels in [0, 1]; outside it the loss is
# dominated by the constant (σ → 0) or the image is invisible to it (σ ≫ 1). The paper uses log 0.1 to log 0.3.
LOG_SCALE_RANGE = (-10.0, 2.0)


def check_at_most(value: int, limit_name: str) -> int:
    """`value`, or a ValueError saying the limit and why (see SIZE_LIMITS)."""
    limit, why = SIZE_LIMITS[limit_name]
    if value > limit:
        raise ValueError(f"must be at most {limit} ({why}), got {value}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    """Where the images come from and how they are prepared."""

    dataset: Literal["tetrominoes", "multi_dsprites", "clevr6", "clevr6_128", "clevrtex", "custom"] = Field(
        description="Dataset name; fixes the number of ground-truth mask entities and the factor kinds "
        "('custom': a file from `emorl data import`, whose masks say how many entities there are; 'clevrtex': "
        "ClevrTex's variant folders)."
    )
    data_dir: Path = Field(Path("data"), description="Folder holding the .h5 files (`emorl data fetch` writes there).")
    train_file: str = Field(
        description="Training .h5 file name inside data_dir (group `train`); for ClevrTex the variant folder "
        "(clevrtex_full), whose train split is the last 80% of its images."
    )
    test_file: str = Field(
        description="Test .h5 file name inside data_dir (group `test`); for ClevrTex the variant folder "
        "(clevrtex_full, clevrtex_camo, …), whose test split is the first 10% of its images (outd: all)."
    )
    image_size: int = Field(gt=0, description="Side of the square image the model sees, in pixels (H = W).")
    clevr_crop: bool = Field(
        False,
        description="CLEVR preprocessing: crop (64,29,256,221) to 192x192, then resize images to image_size; "
        "masks are cropped, not resized.",
    )
    load_masks: bool = Field(True, description="Load ground-truth masks (needed for ARI and DCI).")
    load_factors: bool = Field(False, description="Load ground-truth factors (needed for DCI).")
    in_memory: bool = Field(True, description="Read the whole split into memory when it fits (much faster).")

    @field_validator("image_size")
    @classmethod
    def _image_side(cls, v: int) -> int:
        return check_at_most(v, "image_side")

    @model_validator(mode="after")
    def _clevrtex_folders(self) -> DataConfig:
        if self.dataset != "clevrtex":
            return self
        folders = ", ".join(f"clevrtex_{v}" for v in CLEVRTEX_VARIANTS)
        for key in ("train_file", "test_file"):
            name = getattr(self, key)
            if not name.startswith("clevrtex_") or name.removeprefix("clevrtex_") not in CLEVRTEX_VARIANTS:
                raise ValueError(f"{key}={name!r} is no ClevrTex variant folder; use one of {folders}")
        if self.train_file == "clevrtex_outd":
            raise ValueError("train_file=clevrtex_outd: outd is a test set only; train on clevrtex_full")
        if self.clevr_crop:
            raise ValueError("clevr_crop is for CLEVR .h5 files; ClevrTex has its own centre crop, set it false")
        return self


class ModelConfig(_Section):
    """EfficientMORL or the Slot Attention baseline."""

    kind: Literal["emorl", "slot_attention"] = Field("emorl", description="Which model to build.")
    K: int = Field(gt=0, description="K: number of slots (object components).")
    z_size: int = Field(gt=0, description="D: size of each slot's latent vector.")
    input_size: tuple[int, int, int] = Field(description="[C, H, W] of the images the model sees.")
    stochastic_layers: int = Field(3, ge=0, description="L: number of bottom-up stochastic (HVAE) layers.")
    refinement_iters: int = Field(
        3, ge=0, description="I: iterative-amortized refinement steps at test time (training uses the curriculum)."
    )
    log_scale: float = Field(
        math.log(0.1),
        ge=LOG_SCALE_RANGE[0],
        le=LOG_SCALE_RANGE[1],
        description="log σ of the image likelihood; σ = exp(log_scale) is global and fixed (−10 to 2: σ from "
        "4.5e-5 to 7.4 on pixels in [0, 1]).",
    )
    image_likelihood: Literal["gaussian", "gmm"] = Field(
        "gaussian", description="Pixel likelihood: Gaussian around the mask-weighted mean, or a mixture (GMM)."
    )
    image_decoder: Literal["small", "big", "iodine", "upsample"] = Field(
        "iodine",
        description="Spatial-broadcast decoder: 'small' (Tetrominoes), 'iodine' (CLEVR, dSprites), 'big'; "
        "'upsample' (emorl's, not the paper's): broadcast at a quarter of each side, doubled twice, ~4x cheaper "
        "than 'iodine' at 64x64 (sides divisible by 4).",
    )
    use_dual_gru: bool = Field(True, description="Update the posterior's mean and softplus with the DualGRU.")
    bottom_up_prior: bool = Field(
        False,
        description="Bottom-up prior: layer l's prior is p(z^l | z^(l-1)) from a sample of layer l-1's posterior "
        "(else the reversed prior p(z^l | z^(l+1))).",
    )
    reverse_prior_plusplus: bool = Field(True, description="Reversed prior++ (needs bottom_up_prior false).")
    init_gain: float = Field(
        0.02,
        gt=0,
        le=100,
        description="Gain of the Xavier-normal initialisation of the layers the original initialises that way "
        "(0.02 in the paper; at 0.02 the image is invisible to the slots at first, which makes the start slow; "
        "at most 100).",
    )

    encoder_width: int = Field(
        64,
        gt=0,
        le=1024,
        description="Channels of the image encoder's convolutions and token MLP (64 in the paper); smaller is "
        "cheaper per step.",
    )
    decoder_width: Optional[int] = Field(
        None,
        gt=0,
        le=1024,
        description="Channels of the decoder's hidden convolutions; null: the decoder kind's own (32 'small', "
        "64 'iodine' and 'big', as in the paper).",
    )
    attention_temperature: float = Field(
        1.0,
        gt=0,
        le=100,
        description="T in the slot-attention logits q·k/(T·√D): 1 in the paper; below 1 the slots compete "
        "for the pixels more sharply from the first step.",
    )
    position_scale: float = Field(
        1.0,
        ge=0,
        le=100,
        description="Factor on the initial weights of the encoder's position-embedding projection: 1 is the "
        "original (PyTorch's default init). At 1 and init gain 1 the position dominates the attention keys (4× "
        "the difference between a sprite and the background on Multi-dSprites), so the slots first split the "
        "image into regions; below 1 the pixels' colours count first. The projection still learns.",
    )
    layer_noise: Literal["fresh", "shared"] = Field(
        "fresh",
        description="The noise of the samples z^l that bottom-up layers 2..L make their attention queries from: "
        "drawn afresh for every layer (the paper), or 'shared': each slot keeps the ε of its first sample, "
        "z^l = μ^l + σ^l·ε, so a slot keeps its identity through the layers, as Slot Attention's slots keep "
        "their initial noise through its iterations (on Multi-dSprites the posterior σ, 0.6, is 20× the spread "
        "of the slots' means early on, so fresh noise restarts the slots at every layer).",
    )
    decoder_position_frequencies: int = Field(
        0,
        ge=0,
        le=8,
        description="F: sine and cosine octaves (2^k·π, k = 0..F−1) of the row and column position added to the "
        "four linear ramps the spatial-broadcast decoder is given (0: the ramps alone, the paper). A decoder fed "
        "ramps alone draws smooth regions first and small shapes late (spectral bias); F = 4 gives it "
        "positions as fine as 8 periods across the image.",
    )
    slot_init: Literal["shared", "per_slot"] = Field(
        "shared",
        description="λ⁰, the posterior the bottom-up layers start from: one learned [μ, s] shared by the K slots "
        "(the paper; slots differ only by their samples, so the model is symmetric in its slots), or one per "
        "slot ('per_slot', as learned slot queries in BO-QSA: slots differ from the first layer, and slot k "
        "is no longer interchangeable with slot j).",
    )

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(s <= 0 for s in v):
            raise ValueError(f"every entry must be positive, got {list(v)}")
        if v[0] != 3:
            raise ValueError(f"images have 3 channels, got C={v[0]}")
        check_at_most(max(v[1:]), "image_side")
        return v

    @field_validator("K", "z_size", "stochastic_layers", "refinement_iters")
    @classmethod
    def _bounded(cls, v: int, info: ValidationInfo) -> int:
        return check_at_most(v, str(info.field_name))

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelConfig:
        if self.kind == "slot_attention" and self.slot_init != "shared":
            raise ValueError("model.slot_init='per_slot' is an EfficientMORL option; Slot Attention starts shared")
        if self.reverse_prior_plusplus and self.bottom_up_prior:
            raise ValueError(
                "model.reverse_prior_plusplus=true needs model.bottom_up_prior=false; set one of them to false"
            )
        if self.image_decoder == "upsample" and (self.input_size[1] % 4 or self.input_size[2] % 4):
            raise ValueError(
                f"model.image_decoder='upsample' needs image sides divisible by 4, but model.input_size is "
                f"{list(self.input_size)}; use 'iodine' or 'small'"
            )
        if self.image_decoder == "big" and (
            self.input_size[1] != self.input_size[2] or self.input_size[1] not in BIG_DECODER_SIZES
        ):
            sizes = ", ".join(f"{s}x{s}" for s in BIG_DECODER_SIZES)
            raise ValueError(
                f"model.image_decoder='big' produces only {sizes} images, but model.input_size is "
                f"{list(self.input_size)}; use 'iodine' or 'small'"
            )
        return self


class GecoConfig(_Section):
    """GECO (Rezende & Viola 2018): minimise KL subject to a reconstruction constraint."""

    enabled: bool = Field(True, description="Train with GECO; false trains the plain ELBO.")
    target: float = Field(
        -1.224,
        description="Reconstruction target C per pixel and channel (nats); the total target is C·(C·H·W).",
    )
    ema_alpha: float = Field(0.99, gt=0, lt=1, description="Decay of the EMA of the constraint (C − NLL).")
    beta_step_size: float = Field(1e-6, gt=0, description="Step size of the Lagrange parameter beta.")
    step_size_acceleration: float = Field(
        1.0,
        gt=0,
        description="Multiplier on the beta step size while the constraint is met (EMA > 0); 1 disables it, "
        "as in the original code.",
    )
    warm_start: int = Field(1000, ge=0, description="Training step at which the EMA is initialised; ELBO before it.")


class TrainingConfig(_Section):
    """Optimisation (the original's train.py semantics)."""

    batch_size: int = Field(
        32,
        gt=0,
        description="Global batch size, split evenly across processes (refused when its memory estimate exceeds "
        "the free memory).",
    )
    iters: int = Field(gt=0, description="Number of gradient steps.")
    lr: float = Field(4e-4, gt=0, description="Adam learning rate after warm-up.")
    warmup: int = Field(10_000, ge=0, description="Linear learning-rate warm-up steps from 0.")
    lr_decay_rate: float = Field(0.5, gt=0, le=1, description="After warm-up lr·rate^((step−warmup)/decay_steps).")
    lr_decay_steps: int = Field(100_000, gt=0, description="Steps over which the learning rate decays by the rate.")
    refinement_curriculum: list[tuple[int, int]] = Field(
        default_factory=lambda: [(-1, 3)],
        description="[(step, I), …]: from each step on, train with I refinement steps (last entry ≤ step wins).",
    )
    clip_grad_norm: Optional[float] = Field(5.0, description="Max global gradient norm; null disables clipping.")
    kl_beta: float = Field(1.0, ge=0, description="Weight of the KL term (beta-VAE).")
    checkpoint_every: int = Field(25_000, gt=0, description="Save a checkpoint every this many steps.")
    keep_checkpoints: int = Field(3, gt=0, description="How many newest checkpoints to keep.")
    log_every: int = Field(100, gt=0, description="Write scalars every this many steps.")
    image_every: int = Field(1000, gt=0, description="Write TensorBoard images every this many steps.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no",
        description="Autocast precision of the step: no (float32), bf16, or fp16 (with dynamic loss scaling; "
        "steps with inf/NaN gradients are skipped and counted).",
    )
    compile: bool = Field(
        False, description="Wrap the encoder, decoder and refinement networks with torch.compile (slow first steps)."
    )
    num_workers: int = Field(
        0, ge=0, le=WORKERS_MAX, description="DataLoader worker processes (batches are pinned on a GPU; at most 256)."
    )
    seed: int = Field(1, ge=0, le=SEED_MAX, description=f"Random seed of the run (0 to {SEED_MAX}).")
    eval_every: int = Field(
        0,
        ge=0,
        description="Evaluate on eval.num_images test images every this many steps and at the end (FG-ARI, "
        "ARI, MSE, KL as `emorl eval ari`; rows in metrics.jsonl, eval/* in TensorBoard, checkpoints/best.pt); "
        "0 turns it off.",
    )
    max_minutes: Optional[float] = Field(
        None,
        gt=0,
        description="Wall-clock budget of the run in minutes, summed over resumes (evaluation included); "
        "training stops at whichever comes first, this or `iters`. null: no budget.",
    )
    log_with: list[str] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers the training scalars, evaluation rows, figures and config go to, through "
        "Accelerate: tensorboard (in RUN/tb), wandb, mlflow, comet_ml, aim, clearml, dvclive, … (each needs its "
        "own package); [] for metrics.jsonl only, which is always written.",
    )

    @field_validator("log_with", mode="before")
    @classmethod
    def _tracker_names(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "[]")):
            return []
        if isinstance(v, str):  # --set training.log_with=wandb,mlflow
            v = v.split(",")
        if isinstance(v, (list, tuple)):
            names = [str(n).strip() for n in v if str(n).strip()]
            return list(dict.fromkeys(names))  # each once, in the order given
        return v

    @field_validator("refinement_curriculum")
    @classmethod
    def _increasing(cls, v: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if not v:
            raise ValueError("needs at least one (step, I) entry, e.g. [[-1, 3]]")
        steps = [s for s, _ in v]
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"steps must be strictly increasing, got {steps}")
        if any(i < 0 for _, i in v):
            raise ValueError(f"refinement steps I must be ≥ 0, got {[i for _, i in v]}")
        for _, i in v:
            check_at_most(i, "refinement_iters")
        return v

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML reads an unquoted `no` as false

    @field_validator("max_minutes")
    @classmethod
    def _finite_budget(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not math.isfinite(v):
            raise ValueError(f"must be a finite number of minutes or null, got {v}")
        return v

    @field_validator("clip_grad_norm")
    @classmethod
    def _positive_clip(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and v <= 0:
            raise ValueError(f"must be positive or null, got {v}")
        return v

    def refinement_iters_at(self, step: int) -> int:
        """I for a training step: the I of the last curriculum entry whose step ≤ `step`."""
        current = self.refinement_curriculum[0][1]
        for start, iters in self.refinement_curriculum:
            if step >= start:
                current = iters
        return current


class EvalConfig(_Section):
    """Defaults of `emorl eval`."""

    num_images: int = Field(320, gt=0, description="Test images to evaluate (the paper used 320).")
    batch_size: int = Field(32, gt=0, le=BATCH_MAX, description="Images per batch during evaluation (at most 65,536).")
    samples: int = Field(1, gt=0, description="Stochastic inference passes per image.")
    refinement_iters: Optional[int] = Field(None, ge=0, description="I at test time; null uses model.refinement_iters.")

    @field_validator("refinement_iters")
    @classmethod
    def _bounded_iters(cls, v: Optional[int]) -> Optional[int]:
        return v if v is None else check_at_most(v, "refinement_iters")


class Config(_Section):
    """A whole run: data, model, GECO, training and evaluation settings."""

    data: DataConfig
    model: ModelConfig
    geco: GecoConfig = Field(default_factory=GecoConfig)
    training: TrainingConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        entities = DATASET_ENTITIES.get(self.data.dataset)  # None: known only from the file (custom)
        if entities is not None and self.model.K < entities:
            raise ValueError(
                f"model.K={self.model.K} is smaller than the {entities} entities (background included) of "
                f"data.dataset='{self.data.dataset}'; set model.K ≥ {entities}"
            )
        h, w = self.model.input_size[1:]
        if (h, w) != (self.data.image_size, self.data.image_size):
            raise ValueError(
                f"model.input_size {list(self.model.input_size)} does not match data.image_size="
                f"{self.data.image_size}; make them equal"
            )
        if self.model.kind == "slot_attention" and self.geco.enabled:
            raise ValueError("model.kind='slot_attention' trains without GECO; set geco.enabled=false")
        return self

    def test_refinement_iters(self) -> int:
        """I at test time: eval.refinement_iters, else model.refinement_iters."""
        if self.eval.refinement_iters is not None:
            return self.eval.refinement_iters
        return self.model.refinement_iters

    def geco_total_target(self) -> float:
        """GECO target for a whole image: the per-pixel-channel target times C·H·W."""
        c, h, w = self.model.input_size
        return self.geco.target * c * h * w


# --------------------------------------------------------------------------------------------- loading


def shipped_config_names() -> list[str]:
    """Names of the YAML configs shipped in `configs/`."""
    return sorted(p.stem for p in _configs_dir().glob("*.yaml"))


def _configs_dir() -> Path:
    """The shipped `configs/` folder (a link to the top-level folder in a checkout, a copy when installed)."""
    folder = Path(__file__).resolve().parent / "configs"
    if not folder.is_dir():
        raise ConfigError(f"the shipped configs folder {folder} is missing; reinstall emorl")
    return folder


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A shipped name ('tetrominoes') or a path to a YAML file → the file's path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise ConfigError(f"config {str(path)!r} is a folder, not a YAML file; give the path of a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; give a path to a YAML file or a shipped name")
        return path
    shipped = _configs_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"unknown config {str(name_or_path)!r}; use a YAML path or one of: {', '.join(shipped_config_names())}"
    )


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping names one key twice."""


class DuplicateKeyError(ConfigError):
    """A YAML mapping names one key twice (YAML forbids it; emorl never keeps one of them silently)."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no tags that build Python objects) that refuses a key given twice in a mapping,
    which YAML forbids and PyYAML would settle silently with the last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # PyYAML itself reports an unhashable key
            if key in seen:
                raise _DuplicateKey(
                    None,
                    None,
                    f"key {key!r} appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    """A YAML error in one phrase: what is wrong and where (PyYAML's own message spans several lines)."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def parse_yaml(data: str | bytes, source: str) -> Any:
    """YAML text (or UTF-8 bytes) → Python values, with the safe loader and no key twice in a mapping.

    Raises:
        ConfigError: one line naming `source`: not UTF-8, a syntax error (line and column), a duplicate key,
            a tag that would build a Python object, or nesting too deep to read.
    """
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{source} is not UTF-8 text (byte {exc.start} is {bytes(data)[exc.start : exc.start + 1]!r}); "
                "save it as UTF-8"
            ) from None
    try:
        return yaml.load(data, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as exc:
        raise DuplicateKeyError(f"{source} is not valid YAML ({_describe_yaml_error(exc)}); fix it") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML ({_describe_yaml_error(exc)}); fix it") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to read as YAML; fix it") from None


def read_yaml_file(path: Path, error: type[EmorlError] = ConfigError, what: str = "config file") -> Any:
    """The YAML in file `path` (see `parse_yaml`); a folder, a missing or unreadable file is one line too."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a folder, not a YAML file; give the path of the file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; check the path") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path} ({exc.strerror or exc})") from None
    try:
        return parse_yaml(data, str(path))
    except ConfigError as exc:
        if error is ConfigError:
            raise
        raise error(str(exc)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping, with a clear error for syntax errors or a non-mapping file."""
    raw = read_yaml_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with sections data/model/training, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value, e.g. training.iters=100")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"override key {key!r} must be dotted section.field, e.g. model.K")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
            node = child
        try:
            node[parts[-1]] = parse_yaml(text, f"--set {item}")
        except DuplicateKeyError:
            raise
        except ConfigError:
            node[parts[-1]] = text  # not YAML: taken as the string it is
    return raw


def format_validation_error(exc: ValidationError) -> list[str]:
    """One `section.field: message` line per problem."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a field of this section)"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines


class ConfigValidationError(ConfigError):
    """A config failed validation; `problems` holds one `field: message` line each."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source} is invalid: " + "; ".join(problems))


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested dict into a `Config`, raising `ConfigValidationError` listing every bad field."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigValidationError(source, format_validation_error(exc)) from None


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a shipped name or YAML path, apply dotted overrides, validate.

    When the file is valid on its own but not with the overrides, the error names the `--set` overrides at
    fault rather than the file.
    """
    path = resolve_config_path(name_or_path)
    raw = read_yaml(path)
    if not overrides:
        return config_from_dict(raw, source=str(path))
    original = copy.deepcopy(raw)
    try:
        return config_from_dict(apply_overrides(raw, overrides), source=str(path))
    except ConfigValidationError as exc:
        try:
            config_from_dict(original, source=str(path))
        except ConfigValidationError:
            raise exc from None  # the file itself is invalid
        blamed = [item for item in overrides if any(_blames(item, problem) for problem in exc.problems)]
        source = ", ".join(f"--set {item}" for item in blamed or overrides)
        raise ConfigValidationError(source, exc.problems) from None


def _blames(override: str, problem: str) -> bool:
    """Whether a `section.field: message` problem line concerns the `key=value` override."""
    key = override.split("=", 1)[0].strip()
    loc = problem.split(": ", 1)[0] if ": " in problem else ""
    return key in problem or (bool(loc) and (key.startswith(loc + ".") or loc.startswith(key)))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain, YAML-safe dict of a config (paths and tuples become strings and lists)."""
    return cfg.model_dump(mode="json")


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
