"""Conditioning: `GeneralConditioner` and the embedders the video models use.

A conditioner turns a batch (a dict of tensors/lists) into the conditioning dict a network takes:

    vector    (N, D)           rank-2 embeddings, concatenated along dim 1 (feature dim)
    crossattn (N, L, D)        rank-3 embeddings, concatenated along dim 2 (token-feature dim)
    concat    (N, C, h, w)     rank-4 embeddings, concatenated along dim 1 (channel dim)

Each entry of `emb_models` is `{target, params}` plus conditioner-level keys:

    input_key | input_keys   batch key(s) fed to the embedder (one of the two is required)
    is_trainable             default False: the embedder is frozen and runs under no_grad (a gradient
                             its inputs carry still flows through to them)
    ucg_rate                 default 0.0: probability of dropping the embedding (classifier-free guidance)
    legacy_ucg_value         if set, dropping replaces the *input* rows by this value instead
    output_key               optional (ours): send the outputs to this key instead of routing by rank;
                             a str applies to every output, a list names one key (or None) per output

Upstream chooses the key `cond_view` / `cond_motion` by the embedder's *input* key name; here the
config says so explicitly with `output_key` (SV4D configs need `output_key: cond_view` etc.).

Video batches hold the int `num_video_frames` = T. There, classifier-free dropout draws one keep/drop
decision per clip and applies it to all its frames (upstream draws per frame).

Importing this module is cheap: open_clip and kornia are imported when a CLIP embedder is built/used.
"""
from __future__ import annotations

import logging
import numbers
from contextlib import contextmanager, nullcontext
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from sgm.modules.diffusionmodules.util import timestep_embedding
from sgm.util import (
    ConfigError,
    append_dims,
    count_params,
    fold_frames,
    freeze,
    instantiate_from_config,
)

logger = logging.getLogger(__name__)

OUTPUT_DIM2KEYS = {2: "vector", 3: "crossattn", 4: "concat"}  # embedding rank -> output key
KEY2CATDIM = {"vector": 1, "crossattn": 2, "concat": 1, "cond_view": 1, "cond_motion": 1}
DEFAULT_CATDIM = 1  # for explicit output keys not listed above
# A batch entry `<input_key>__cached` is that embedder's output computed beforehand
# (sgm.data.conditioning_cache); the conditioner uses it instead of running the embedder. The engine reads
# `<model input_key>__cached` the same way, as the first stage's encoding (DiffusionEngine.input_latents).
CACHED_SUFFIX = "__cached"

# CLIP image normalisation constants (open_clip's OPENAI_DATASET_MEAN / _STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class MissingBatchKeyError(KeyError):
    """A batch lacks a key an embedder needs. `str()` is the plain message (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class AbstractEmbModel(nn.Module):
    """Base of all embedders. The conditioner sets the properties from its config entry."""

    def __init__(self):
        super().__init__()
        self._is_trainable: bool | None = None
        self._ucg_rate: float | None = None
        self._input_key: str | None = None
        self.input_keys: list[str] | None = None
        self.legacy_ucg_val: Any = None
        self.output_key: str | Sequence[str | None] | None = None
        # True once a GeneralConditioner applies `ucg_rate` to this embedder's outputs, so an
        # embedder with its own dropout (the CLIP image embedder) does not drop a second time.
        self.ucg_applied_by_conditioner = False

    @property
    def is_trainable(self) -> bool | None:
        return self._is_trainable

    @is_trainable.setter
    def is_trainable(self, value: bool | None):
        self._is_trainable = value

    @property
    def ucg_rate(self) -> float | None:
        return self._ucg_rate

    @ucg_rate.setter
    def ucg_rate(self, value: float | None):
        self._ucg_rate = value

    @property
    def input_key(self) -> str | None:
        return self._input_key

    @input_key.setter
    def input_key(self, value: str | None):
        self._input_key = value


# --------------------------------------------------------------------------------------------
# GeneralConditioner
# --------------------------------------------------------------------------------------------


class GeneralConditioner(nn.Module):
    OUTPUT_DIM2KEYS = OUTPUT_DIM2KEYS
    KEY2CATDIM = KEY2CATDIM

    def __init__(self, emb_models: Sequence[Mapping[str, Any]]):
        super().__init__()
        self.embedders = nn.ModuleList(
            [self._build_embedder(index, entry) for index, entry in enumerate(emb_models)]
        )

    @staticmethod
    def _build_embedder(index: int, entry: Mapping[str, Any]) -> AbstractEmbModel:
        target = entry.get("target", "?") if hasattr(entry, "get") else "?"
        where = f"conditioner emb_models[{index}] ({target})"
        embedder = instantiate_from_config(entry)
        if not isinstance(embedder, AbstractEmbModel):
            raise ConfigError(
                f"{where}: embedder must subclass AbstractEmbModel, got {type(embedder).__name__}"
            )
        embedder.is_trainable = bool(entry.get("is_trainable", False))
        embedder.ucg_rate = float(entry.get("ucg_rate", 0.0))
        embedder.ucg_applied_by_conditioner = True
        if not embedder.is_trainable:
            freeze(embedder)
        if entry.get("input_key") is not None:
            embedder.input_key = entry["input_key"]
        elif entry.get("input_keys") is not None:
            embedder.input_keys = list(entry["input_keys"])
        else:
            raise ConfigError(f"{where}: needs 'input_key' or 'input_keys' (the batch key(s) to embed)")
        embedder.legacy_ucg_val = entry.get("legacy_ucg_value", None)
        if entry.get("output_key") is not None:
            output_key = entry["output_key"]
            embedder.output_key = output_key if isinstance(output_key, str) else list(output_key)
        logger.info(
            "Initialized embedder #%d: %s with %d params. Trainable: %s",
            index, type(embedder).__name__, count_params(embedder), embedder.is_trainable,
        )
        return embedder

    def embedder(self, input_key: str) -> AbstractEmbModel:
        """The embedder that reads batch key `input_key` (e.g. SVD's CLIP image tower: cond_frames_without_noise)."""
        for embedder in self.embedders:
            if getattr(embedder, "input_key", None) == input_key:
                return embedder
        known = [getattr(e, "input_key", None) or getattr(e, "input_keys", None) for e in self.embedders]
        raise ConfigError(f"the conditioner has no embedder with input_key {input_key!r}; its input keys: {known}")

    # -- forward --------------------------------------------------------------------------------

    def forward(
        self,
        batch: Mapping[str, Any],  # embedder inputs; video batches also hold int `num_video_frames`
        force_zero_embeddings: Iterable[str] | None = None,  # input keys whose embeddings are zeroed
    ) -> dict[str, torch.Tensor]:
        force_zero = set(force_zero_embeddings or [])
        num_frames = _num_video_frames(batch)
        # 1. Embed. outputs[i] = [(key, tensor), ...] for embedder i.
        outputs = []
        for index, embedder in enumerate(self.embedders):
            embedded = self._cached_output(embedder, batch)
            if embedded is None:
                inputs = self._embedder_inputs(index, embedder, batch)
                # a frozen embedder builds no graph, unless an input carries a gradient (a DMD chain's
                # self-generated conditioning frame): that gradient flows through, its weights get none
                passes_grad = embedder.is_trainable or any(isinstance(v, torch.Tensor) and v.requires_grad
                                                           for v in inputs)
                with nullcontext() if passes_grad else torch.no_grad():
                    embedded = embedder(*inputs)
            if not isinstance(embedded, (list, tuple)):
                embedded = [embedded]
            keys = [self._output_key(index, embedder, emb, i) for i, emb in enumerate(embedded)]
            outputs.append(list(zip(keys, embedded)))
        # 2. Classifier-free dropout and forced zeros, then concatenation in embedder order.
        num_clips = _num_clips([emb for out in outputs for _, emb in out], num_frames)
        result: dict[str, list[torch.Tensor]] = {}
        for embedder, out in zip(self.embedders, outputs):
            rate = embedder.ucg_rate or 0.0
            drops_outputs = rate > 0 and embedder.legacy_ucg_val is None  # legacy UCG replaced the inputs
            dropout = _ClipDropout(rate, num_frames, num_clips) if drops_outputs else None
            zero = _is_forced_zero(embedder, force_zero)
            for key, emb in out:
                if dropout is not None:
                    emb = append_dims(dropout.keep_mask(emb), emb.ndim) * emb
                if zero:
                    emb = torch.zeros_like(emb)
                result.setdefault(key, []).append(emb)
        return {
            key: embs[0] if len(embs) == 1 else torch.cat(embs, dim=KEY2CATDIM.get(key, DEFAULT_CATDIM))
            for key, embs in result.items()
        }

    @staticmethod
    def _cached_output(embedder: AbstractEmbModel, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """The embedder's precomputed output `<input_key>__cached`, when the batch carries one."""
        if embedder.input_key is None or embedder.legacy_ucg_val is not None:  # legacy UCG edits the inputs
            return None
        return batch.get(embedder.input_key + CACHED_SUFFIX)

    def _embedder_inputs(self, index: int, embedder: AbstractEmbModel, batch: Mapping[str, Any]) -> list[Any]:
        keys = [embedder.input_key] if embedder.input_key is not None else list(embedder.input_keys or [])
        for key in keys:
            if key not in batch:
                raise MissingBatchKeyError(
                    f"conditioner embedder {index} ({type(embedder).__name__}) needs batch key '{key}'; "
                    f"batch has: {sorted(map(str, batch.keys()))}"
                )
        if embedder.input_key is not None and embedder.legacy_ucg_val is not None:
            return [_replace_rows_with_legacy_value(batch[embedder.input_key], embedder)]
        return [batch[key] for key in keys]

    def _output_key(self, index: int, embedder: AbstractEmbModel, emb: torch.Tensor, position: int) -> str:
        explicit = embedder.output_key
        if isinstance(explicit, (list, tuple)):
            explicit = explicit[position] if position < len(explicit) else None
        if explicit is not None:
            return explicit
        if emb.ndim not in OUTPUT_DIM2KEYS:
            raise ValueError(
                f"conditioner embedder {index} ({type(embedder).__name__}) returned an output of rank "
                f"{emb.ndim} (shape {tuple(emb.shape)}); only ranks 2, 3, 4 are routed "
                f"(vector, crossattn, concat) unless the config gives 'output_key'"
            )
        return OUTPUT_DIM2KEYS[emb.ndim]

    # -- unconditional conditioning --------------------------------------------------------------

    def get_unconditional_conditioning(
        self,
        batch_c: Mapping[str, Any],
        batch_uc: Mapping[str, Any] | None = None,  # default: batch_c
        force_uc_zero_embeddings: Iterable[str] | None = None,
        force_cond_zero_embeddings: Iterable[str] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(c, uc) with all classifier-free dropout off (nested embedders included)."""
        embedders = [m for m in self.modules() if isinstance(m, AbstractEmbModel)]
        saved_rates = [m.ucg_rate for m in embedders]
        try:
            for module in embedders:
                module.ucg_rate = 0.0
            c = self(batch_c, force_cond_zero_embeddings)
            uc = self(batch_c if batch_uc is None else batch_uc, force_uc_zero_embeddings)
        finally:
            for module, rate in zip(embedders, saved_rates):
                module.ucg_rate = rate
        return c, uc


def _num_video_frames(batch: Mapping[str, Any]) -> int | None:
    value = batch.get("num_video_frames") if hasattr(batch, "get") else None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0:
        return int(value)
    return None


def _num_clips(embeddings: list[torch.Tensor], num_frames: int | None) -> int | None:
    """Clips in a video batch: the largest row count (a per-frame output, b·T rows) divided by T."""
    if num_frames is None or not embeddings:
        return None
    rows = max((emb.shape[0] for emb in embeddings if isinstance(emb, torch.Tensor)), default=0)
    return rows // num_frames if rows > 0 and rows % num_frames == 0 else None


class _ClipDropout:
    """Keep masks for one embedder's outputs: Bernoulli(1 - rate), torch RNG.

    Image batches: one decision per row. Video batches (T frames, b clips): one decision per clip,
    shared by the clip's T frame rows; outputs with b rows (per-clip) use the same decisions.
    Outputs of one embedder share decisions (per row count).
    """

    def __init__(self, rate: float, num_frames: int | None, num_clips: int | None):
        self.rate = rate
        self.num_frames = num_frames
        self.num_clips = num_clips
        self._masks: dict[int, torch.Tensor] = {}

    def keep_mask(self, emb: torch.Tensor) -> torch.Tensor:
        rows, frames, clips = emb.shape[0], self.num_frames, self.num_clips
        if rows not in self._masks:
            if clips is not None and rows in (clips, clips * frames):
                if clips not in self._masks:
                    self._masks[clips] = self._draw(clips, emb.device)  # one decision per clip
                self._masks[rows] = self._masks[clips].repeat_interleave(rows // clips)  # (b t)
            else:
                self._masks[rows] = self._draw(rows, emb.device)  # one decision per row
        return self._masks[rows].to(device=emb.device, dtype=emb.dtype)

    def _draw(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.bernoulli(torch.full((n,), 1.0 - self.rate, device=device))


def _is_forced_zero(embedder: AbstractEmbModel, force_zero: set[str]) -> bool:
    if embedder.input_key is not None:
        return embedder.input_key in force_zero
    return any(key in force_zero for key in embedder.input_keys or [])


def _replace_rows_with_legacy_value(values: Any, embedder: AbstractEmbModel) -> Any:
    """Legacy UCG: each row is replaced by `legacy_ucg_val` with probability `ucg_rate` (a copy;
    upstream overwrote the batch in place)."""
    rate = embedder.ucg_rate or 0.0
    if rate <= 0:
        return values
    drop = (torch.rand(len(values)) < rate).tolist()
    if isinstance(values, torch.Tensor):
        values = values.clone()
        for i, dropped in enumerate(drop):
            if dropped:
                values[i] = embedder.legacy_ucg_val
        return values
    return [embedder.legacy_ucg_val if dropped else value for value, dropped in zip(values, drop)]


# --------------------------------------------------------------------------------------------
# Small embedders
# --------------------------------------------------------------------------------------------


class IdentityEncoder(AbstractEmbModel):
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ClassEmbedder(AbstractEmbModel):
    def __init__(
        self,
        embed_dim: int,  # embedding width
        n_classes: int = 1000,  # number of class ids
        add_sequence_dim: bool = False,  # (B, D) -> (B, 1, D), i.e. crossattn instead of vector
    ):
        super().__init__()
        self.embedding = nn.Embedding(n_classes, embed_dim)
        self.n_classes = n_classes
        self.add_sequence_dim = add_sequence_dim

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        c = self.embedding(c.long())  # (B, D)
        if self.add_sequence_dim:
            c = c[:, None, :]  # (B, 1, D)
        return c


class ConcatTimestepEmbedderND(AbstractEmbModel):
    """Sinusoidal embedding of each of d scalars per row, concatenated: (B,) | (B, d) -> (B, d·outdim)."""

    def __init__(self, outdim: int):
        super().__init__()
        self.outdim = outdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 1:
            x = x[:, None]  # (B, 1)
        b, d = x.shape
        emb = timestep_embedding(x.reshape(b * d), self.outdim)  # ((b d), outdim)
        return emb.reshape(b, d * self.outdim)  # (b, d·outdim)


# --------------------------------------------------------------------------------------------
# CLIP image embedders
# --------------------------------------------------------------------------------------------


class FrozenOpenCLIPImageEmbedder(AbstractEmbModel):
    """open_clip vision tower -> pooled, projected image embedding (B, embed_dim); 1024 for ViT-H-14.

    `pretrained=False` (default) builds random weights without any download: released SVD/SV3D/SV4D
    checkpoints carry the CLIP weights under `conditioner.embedders.0.open_clip.model.*`.
    `pretrained=True` loads the open_clip tag `version` (downloads it into open_clip's cache).
    Only the text transformer is deleted; the text-side leftovers (`token_embedding`,
    `positional_embedding`, `ln_final`, `text_projection`, `logit_scale`) stay so the state dict
    matches upstream checkpoints. Built on `init_device`, else the current default device (so
    `with torch.device("meta"):` works); `device` is only recorded.
    """

    def __init__(
        self,
        arch: str = "ViT-H-14",  # open_clip architecture name
        version: str = "laion2b_s32b_b79k",  # open_clip pretrained tag (used when pretrained=True)
        device: str = "cuda",  # recorded only (upstream compatibility)
        max_length: int = 77,  # token count for repeat_to_max_len
        freeze: bool = True,  # eval mode and no gradients
        antialias: bool = True,  # antialiased resize to the tower's input size
        ucg_rate: float = 0.0,  # own dropout; only used when not managed by a GeneralConditioner
        unsqueeze_dim: bool = False,  # (B, D) -> (B, 1, D)
        repeat_to_max_len: bool = False,  # also return the embedding repeated to (B, max_length, D)
        num_image_crops: int = 0,  # > 0: input (B, n, 3, H, W), output (B, n, D)
        output_tokens: bool = False,  # return (tokens, pooled)
        init_device: str | torch.device | None = None,  # device to build on (default: current default)
        pretrained: bool = False,  # load `version` weights through open_clip (downloads)
        arch_config: Mapping[str, Any] | None = None,  # open_clip model config registered as `arch`
    ):
        super().__init__()
        import open_clip  # heavy; imported only when a CLIP embedder is built

        if arch_config is not None:
            register_open_clip_arch(arch, arch_config)

        build_device = init_device if init_device is not None else torch.get_default_device()
        with _quiet_random_init(enabled=not pretrained):
            model = open_clip.create_model(
                arch, pretrained=version if pretrained else None, device=build_device
            )
        del model.transformer  # text tower; its leftovers stay for checkpoint compatibility
        if "attn_mask" in model._buffers:  # the text tower's causal mask (non-persistent, unused now)
            del model.attn_mask
        self.model = model
        self.device = device
        self.max_length = max_length
        self.antialias = antialias
        self.ucg_rate = ucg_rate
        self.unsqueeze_dim = unsqueeze_dim
        self.repeat_to_max_len = repeat_to_max_len
        self.max_crops = num_image_crops
        self.output_tokens = output_tokens
        if repeat_to_max_len and (output_tokens or num_image_crops > 0):
            raise ValueError(
                "FrozenOpenCLIPImageEmbedder: repeat_to_max_len excludes output_tokens and num_image_crops"
            )
        self.model.visual.output_tokens = output_tokens
        # Constants, never in checkpoints: real CPU tensors even when the model is built on meta.
        self.register_buffer("mean", torch.tensor(CLIP_MEAN, device="cpu"), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD, device="cpu"), persistent=False)
        if freeze:
            self.freeze()

    def freeze(self) -> None:
        freeze(self)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> CLIP-normalised (N, 3, S, S), S = the tower's input size (224)."""
        import kornia  # heavy; imported on first use

        size = tuple(self.model.visual.image_size)
        x = kornia.geometry.transform.resize(
            x, size, interpolation="bicubic", align_corners=True, antialias=self.antialias
        )
        x = (x + 1.0) / 2.0  # [-1, 1] -> [0, 1]
        mean, std = self.mean.to(x.dtype)[:, None, None], self.std.to(x.dtype)[:, None, None]
        return (x - mean) / std

    def encode_with_vision_transformer(self, img: torch.Tensor):
        return self.model.visual(self.preprocess(img))

    def forward(self, image: torch.Tensor, no_dropout: bool = False):
        if self.max_crops > 0:
            b, n = image.shape[:2]
            if n != self.max_crops:
                raise ValueError(
                    f"expected {self.max_crops} crops per image, got input of shape {tuple(image.shape)}"
                )
            image = image.reshape(b * n, *image.shape[2:])  # (b n) 3 H W
        out = self.encode_with_vision_transformer(image)
        z, tokens = out if self.output_tokens else (out, None)
        z = z.to(image.dtype)  # (N, D)
        if self.max_crops > 0:
            z = z.reshape(b, n, z.shape[-1])  # (b, n, D): each crop can be dropped on its own
            tokens = tokens.reshape(b, n, *tokens.shape[1:]) if tokens is not None else None
        rate = self.ucg_rate or 0.0
        if rate > 0 and not no_dropout and not self.ucg_applied_by_conditioner:
            keep = torch.bernoulli(torch.full(z.shape[: z.ndim - 1], 1.0 - rate, device=z.device))
            z = keep[..., None].to(z.dtype) * z
            if tokens is not None:
                tokens = append_dims(keep, tokens.ndim).to(tokens.dtype) * tokens
        if self.unsqueeze_dim:
            z = z[:, None, :]  # (N, 1, D)
        if self.output_tokens:
            return tokens, z
        if self.repeat_to_max_len:
            z_seq = z if z.ndim == 3 else z[:, None, :]  # (N, 1, D)
            return z_seq.expand(-1, self.max_length, -1), z  # (N, max_length, D), (N, D)
        return z


class _RandomInitWarningFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def register_open_clip_arch(name: str, config: Mapping[str, Any]) -> None:
    """Make an open_clip architecture from a config dict (embed_dim, vision_cfg, text_cfg) buildable
    by name, e.g. a tiny CLIP for CPU toy models. Uses open_clip's public `add_model_config`."""
    import json
    import os
    import tempfile

    import open_clip

    if not isinstance(config, Mapping) or not {"embed_dim", "vision_cfg"} <= set(config):
        raise ConfigError(f"arch_config for '{name}' needs at least 'embed_dim' and 'vision_cfg'")
    plain = json.loads(json.dumps(_to_plain(config)))
    plain.setdefault("text_cfg", {"context_length": 77, "vocab_size": 64, "width": 32, "heads": 1, "layers": 1})
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"{name}.json")
        with open(path, "w") as f:
            json.dump(plain, f)
        open_clip.add_model_config(path)


def _to_plain(config: Any) -> Any:
    if isinstance(config, Mapping):
        return {str(k): _to_plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)) or type(config).__name__ == "ListConfig":
        return [_to_plain(v) for v in config]
    return config


@contextmanager
def _quiet_random_init(enabled: bool):
    """Silence open_clip's "initialized randomly" warning: random init is what pretrained=False asks for."""
    if not enabled:
        yield
        return
    root, quiet = logging.getLogger(), _RandomInitWarningFilter()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


class FrozenOpenCLIPImagePredictionEmbedder(AbstractEmbModel):
    """CLIP embedding of the conditioning frames.

    ((b·n_cond_frames), 3, H, W) -> (b·n_copies, n_cond_frames, D): a rank-3 output (crossattn).
    """

    def __init__(
        self,
        open_clip_embedding_config: Mapping[str, Any],  # a FrozenOpenCLIPImageEmbedder config
        n_cond_frames: int,  # conditioning frames per clip
        n_copies: int,  # repeats of each clip's embedding along the batch
    ):
        super().__init__()
        self.n_cond_frames = n_cond_frames
        self.n_copies = n_copies
        self.open_clip = instantiate_from_config(open_clip_embedding_config)

    def forward(self, vid: torch.Tensor) -> torch.Tensor:
        z = self.open_clip(vid)  # ((b t), D)
        z = fold_frames(z, self.n_cond_frames)  # (b, t, D)
        return z.repeat_interleave(self.n_copies, dim=0)  # ((b s), t, D)


# --------------------------------------------------------------------------------------------
# VAE-latent embedder
# --------------------------------------------------------------------------------------------


class VideoPredictionEmbedderWithEncoder(AbstractEmbModel):
    """Latents of the conditioning frames (optionally noise-augmented), for the `concat` slot.

    Input `((b·n_cond_frames), 3, H, W)` in [-1, 1]. With a sigma sampler, one σ per clip adds
    `σ·N(0, 1)` noise to the pixels, and `sigma_cond` (if set) embeds σ as a second output with one
    row per output latent row. Output latents: `(b·n_copies, C, h, w)` when `n_cond_frames == 1`,
    else `(b·n_copies·n_cond_frames, C, h, w)`.
    """

    def __init__(
        self,
        n_cond_frames: int,  # conditioning frames per clip
        n_copies: int,  # repeats of each clip along the batch
        encoder_config: Mapping[str, Any],  # e.g. sgm.models.autoencoder.AutoencoderKLModeOnly
        sigma_sampler_config: Mapping[str, Any] | None = None,  # noise level per clip (e.g. ZeroSampler)
        sigma_cond_config: Mapping[str, Any] | None = None,  # embeds σ (e.g. ConcatTimestepEmbedderND)
        is_ae: bool = False,  # call encoder.encode(x) instead of encoder(x)
        scale_factor: float = 1.0,  # latent scale (1.0 in all video configs: unscaled VAE mean)
        disable_encoder_autocast: bool = False,  # encode in full precision under autocast
        en_and_decode_n_samples_a_time: int | None = None,  # encode chunk size (None = all rows)
    ):
        super().__init__()
        self.n_cond_frames = n_cond_frames
        self.n_copies = n_copies
        self.encoder = instantiate_from_config(encoder_config)
        self.sigma_sampler = _optional(sigma_sampler_config)
        self.sigma_cond = _optional(sigma_cond_config)
        self.is_ae = is_ae
        self.scale_factor = scale_factor
        self.disable_encoder_autocast = disable_encoder_autocast
        self.en_and_decode_n_samples_a_time = en_and_decode_n_samples_a_time

    def forward(self, vid: torch.Tensor):
        sigma_cond = None
        if self.sigma_sampler is not None:
            b = vid.shape[0] // self.n_cond_frames
            sigmas = self.sigma_sampler(b).to(vid.device)  # (b,)
            if self.sigma_cond is not None:
                sigma_cond = self.sigma_cond(sigmas)  # (b, D)
                rows_per_clip = self.n_copies * (1 if self.n_cond_frames == 1 else self.n_cond_frames)
                sigma_cond = sigma_cond.repeat_interleave(rows_per_clip, dim=0)  # one row per output row
            sigmas = sigmas.repeat_interleave(self.n_cond_frames)  # ((b t),)
            vid = vid + torch.randn_like(vid) * append_dims(sigmas, vid.ndim).to(vid.dtype)
        latents = self._encode(vid) * self.scale_factor  # ((b t), C, h, w)
        latents = fold_frames(latents, self.n_cond_frames)  # (b, t, C, h, w)
        latents = latents.repeat_interleave(self.n_copies, dim=0)  # ((b s), t, C, h, w)
        if self.n_cond_frames == 1:
            latents = latents[:, 0]  # ((b s), C, h, w)
        else:
            latents = latents.reshape(-1, *latents.shape[2:])  # ((b s t), C, h, w)
        return (latents, sigma_cond) if sigma_cond is not None else latents

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        chunk = self.en_and_decode_n_samples_a_time or x.shape[0]
        encode = self.encoder.encode if self.is_ae else self.encoder
        context = _autocast_disabled(x.device) if self.disable_encoder_autocast else nullcontext()
        with context:
            out = [encode(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
        return torch.cat(out, dim=0)


def _optional(config: Mapping[str, Any] | None) -> Any:
    return instantiate_from_config(config) if config is not None else None


def _autocast_disabled(device: torch.device):
    if device.type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()


__all__ = [
    "AbstractEmbModel",
    "ClassEmbedder",
    "ConcatTimestepEmbedderND",
    "FrozenOpenCLIPImageEmbedder",
    "FrozenOpenCLIPImagePredictionEmbedder",
    "GeneralConditioner",
    "IdentityEncoder",
    "MissingBatchKeyError",
    "VideoPredictionEmbedderWithEncoder",
]
