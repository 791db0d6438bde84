"""Image augmentations of the pixel agents (DrQ, DrQ(ε), BBF), on batches of (B, C, H, W) tensors."""

from __future__ import annotations

import torch

__all__ = ["augment_pixels", "intensity_noise", "pixels_to_float", "random_shift"]


def random_shift(obs: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ's augmentation: replicate-pad by ``pad`` pixels, crop back at a random offset per sample.

    Computed as two gathers with clamped indices (a crop of the replicate-padded image reads row
    clamp(i + dy − pad, 0, H − 1)), on any dtype; offsets are uniform in {0, …, 2·pad} as in Kostrikov et
    al.'s ``RandomCrop`` after ``ReplicationPad2d`` (Dopamine's JAX crop draws {0, …, 2·pad − 1}).
    """
    batch, channels, height, width = obs.shape
    shifts = torch.randint(0, 2 * pad + 1, (batch, 2), device=obs.device)
    rows = (torch.arange(height, device=obs.device) + shifts[:, :1] - pad).clamp_(0, height - 1)
    cols = (torch.arange(width, device=obs.device) + shifts[:, 1:] - pad).clamp_(0, width - 1)
    out = obs.gather(2, rows.view(batch, 1, height, 1).expand(batch, channels, height, width))
    return out.gather(3, cols.view(batch, 1, 1, width).expand(batch, channels, height, width))


def intensity_noise(obs: torch.Tensor, scale: float) -> torch.Tensor:
    """x·(1 + scale·clip(ε, −2, 2)), one ε ~ N(0, 1) per sample (Schwarzer et al. 2021, SPR; Dopamine's
    ``_intensity_aug``, applied after the crop to float pixels). ``scale = 0`` returns ``obs``."""
    if scale == 0:
        return obs
    noise = torch.randn(obs.shape[0], *([1] * (obs.dim() - 1)), device=obs.device, dtype=obs.dtype)
    return obs * (1.0 + scale * noise.clamp_(-2.0, 2.0))


def pixels_to_float(obs: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 frames → float in [0, 1] (every pixel agent divides by 255), optionally channels-last."""
    if channels_last:
        obs = obs.contiguous(memory_format=torch.channels_last)
    return obs.float().div_(255.0)


def augment_pixels(
    obs: torch.Tensor, pad: int, intensity_scale: float, channels_last: bool = False
) -> torch.Tensor:
    """Random shift of the uint8 frames (``pad`` 0: none), then float in [0, 1], then intensity noise: the
    augmentation of Dopamine's DrQ(ε) and of BBF (``drq_image_aug``), each image its own draw."""
    shifted = random_shift(obs, pad) if pad > 0 else obs
    return intensity_noise(pixels_to_float(shifted, channels_last), intensity_scale)
