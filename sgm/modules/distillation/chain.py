"""Self-Forcing for chained image-to-video generation (seed: dmd_self_forcing_notes.md, `_run_generator`).

Inference. A long video is made chunk by chunk: chunk 1 is conditioned on the user's image, chunk
i+1 on the last frame of chunk i (SVD: `cond_frames_without_noise` for CLIP, `cond_frames` with fresh
cond_aug noise for the concat path; the micro-conditioning stays, `recondition_video_batch`).
`run_chain` is that loop for any sampler of one chunk: the sampling script (`--chunks N`), the per-chunk
evaluation and the training rollout all use it.

Training (DMDEngine `chain: ChainOptions`). A student distilled from real first frames only never sees
its own frames as conditioning and drifts along the chain. Self-Forcing trains it on the chain it makes:

    k ~ U{0..N-1}                  `draw_chunk`: seeded by (seed, global step, stream), the rule of the
                                   exit step (rollout.draw_synced_index): equal on every rank, after a resume
    chunks 0..k-1                  the student's full few-step sampling, without grad, each conditioned on
                                   the last frame of the one before (chunk 0: the data's conditioning frame)
    chunk k                        backward simulation with grad at its exit step, conditioned on the last
                                   frame of chunk k-1; teacher and critic score it under the same
                                   (self-generated) conditioning
    mask                           its first `given_frames` frames reproduce the conditioning frame: they are
                                   out of the DMD loss and its normaliser (the batch's frame mask)

With `grad_into_cond` the last generator step of chunk k-1 keeps its graph, so the gradient of chunk k
also reaches the student through the frame it was conditioned on (Self-Forcing's default, the KV-cache
re-run without grad, corresponds to off). The critic's rollout draws its own k and runs without grad.

What "conditioned on the previous chunk" means is `ChainOptions.conditioning`:

    last_frame     SVD, SVD-XT: the previous chunk's last frame becomes the next chunk's image
                   (`last_frame_recondition`; given_frames 1: frame 0 reproduces it)
    window_views   SV4D 2.0: window k+1's input frames continue the data's input video from window k's last
                   frame (the batch's `chain_video`), its reference views (cond_view) are window k's generated
                   views of that frame (`window_recondition`, sgm.data.video_batch.next_window_batch); those
                   views sit inside the window and its batch's own dmd_mask takes them out (given_frames 0)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sgm.data.video_batch import next_window_batch, recondition_video_batch
from sgm.modules.distillation.rollout import (
    STREAM_CRITIC,
    STREAM_CRITIC_CHUNK,
    STREAM_GENERATOR,
    STREAM_GENERATOR_CHUNK,
    draw_synced_index,
)
from sgm.util import ConfigError

ChunkSampler = Callable[[dict, int], torch.Tensor]  # (chunk batch, chunk index) -> frames (b, t, C, H, W)
Recondition = Callable[[dict, torch.Tensor, int], dict]  # (chunk batch, its frames, chunk index) -> the next batch
CONDITIONINGS = ("last_frame", "window_views")

CHUNK_STREAMS = {STREAM_GENERATOR: STREAM_GENERATOR_CHUNK, STREAM_CRITIC: STREAM_CRITIC_CHUNK}


@dataclass
class ChainOptions:
    """Self-Forcing's chained rollout (model.params.chain)."""

    enabled: bool = True  # False: plain DMD on the data's own chunk
    num_chunks: int = 4  # N, chunks of the chain; the trained one is drawn from 0..N-1
    chunk_frames: int | None = None  # t per chunk; None: the data's num_video_frames
    given_frames: int = 1  # frames at a chunk's start that reproduce its conditioning frame (masked)
    grad_into_cond: bool = False  # the trained chunk's gradient also crosses into its conditioning frame
    conditioning: str = "last_frame"  # "last_frame" (SVD) or "window_views" (SV4D 2.0): module docstring

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise ConfigError(f"model.params.chain.conditioning must be one of {CONDITIONINGS}, "
                              f"got {self.conditioning!r}")
        if self.conditioning == "window_views" and self.chunk_frames is not None:
            raise ConfigError("model.params.chain.chunk_frames must be null with conditioning 'window_views': "
                              "a window's frames are the data's (data.params.num_frames)")
        if self.num_chunks < 1:
            raise ConfigError(f"model.params.chain.num_chunks must be >= 1, got {self.num_chunks}")
        if self.chunk_frames is not None and self.chunk_frames < 2:
            raise ConfigError(f"model.params.chain.chunk_frames must be >= 2 or null, got {self.chunk_frames}")
        if self.given_frames < 0:
            raise ConfigError(f"model.params.chain.given_frames must be >= 0, got {self.given_frames}")


def draw_chunk(
    num_chunks: int,  # N
    global_step: int,  # the trainer's step counter
    seed: int,  # run seed
    stream: int,  # STREAM_GENERATOR or STREAM_CRITIC: the loss that draws
) -> int:
    """Index k ~ U{0..N-1} of the trained chunk, on the loss's own chunk stream."""
    return draw_synced_index(num_chunks, global_step, seed, CHUNK_STREAMS[stream])


def last_frame_recondition(
    num_frames: int | None = None,  # t of the later chunks; None: the batch's
    generator: torch.Generator | None = None,  # the cond_aug noise of the later chunks
) -> Recondition:
    """SVD: chunk i+1 conditioned on chunk i's last frame (clamped to [-1, 1]), `recondition_video_batch`."""

    def recondition(batch: dict, frames: torch.Tensor, index: int) -> dict:
        return recondition_video_batch(batch, frames[:, -1].clamp(-1, 1), num_frames, generator)

    return recondition


def window_recondition(generator: torch.Generator | None = None) -> Recondition:
    """SV4D 2.0: window i+1 of the batch's input video, its reference views window i's own (next_window_batch)."""

    def recondition(batch: dict, frames: torch.Tensor, index: int) -> dict:
        return next_window_batch(batch, frames, index, generator)

    return recondition


def chain_recondition(conditioning: str, num_frames: int | None = None,
                      generator: torch.Generator | None = None) -> Recondition:
    """The Recondition of a ChainOptions.conditioning name."""
    if conditioning == "window_views":
        return window_recondition(generator)
    return last_frame_recondition(num_frames, generator)


def run_chain(
    sample_chunk: ChunkSampler,  # (batch, index) -> frames (b, t, C, H, W), pixel space
    batch: dict,  # chunk 0's batch (b clips)
    num_chunks: int,  # chunks to sample
    recondition: Recondition | None = None,  # the next chunk's batch; None: last_frame_recondition()
) -> tuple[list[torch.Tensor], dict]:
    """Chunks 0..num_chunks-1, chunk i+1 conditioned on chunk i by `recondition`.

    -> the chunks' frames, and the batch of the chunk that would come next (chunk `num_chunks`).
    """
    recondition = recondition or last_frame_recondition()
    chunks = []
    for index in range(num_chunks):
        frames = sample_chunk(batch, index)  # (b, t, C, H, W)
        chunks.append(frames)
        batch = recondition(batch, frames, index)
    return chunks, batch


def given_frame_mask(
    num_clips: int,  # b
    num_frames: int,  # t
    given_frames: int,  # leading frames that are given, not generated
    mask: torch.Tensor | None = None,  # (b t,) or (b, t) the batch's own mask (1 = in the loss), if any
) -> torch.Tensor:
    """-> ((b t),) float frame mask: 0 on the first `given_frames` frames of each clip (and where `mask` is 0)."""
    keep = torch.ones(num_clips, num_frames)
    keep[:, :given_frames] = 0.0
    if mask is not None:
        keep = keep.to(mask.device) * mask.reshape(num_clips, num_frames).float()
    return keep.flatten()  # ((b t),)


__all__ = ["CHUNK_STREAMS", "CONDITIONINGS", "ChainOptions", "ChunkSampler", "Recondition", "chain_recondition", "draw_chunk",
           "given_frame_mask", "last_frame_recondition", "run_chain", "window_recondition"]
