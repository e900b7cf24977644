"""Training-image augmentation on whole batches, on the training device: every image its own."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Augment:
    """Random changes to each training image, every image drawing its own: a crop of
    ``crop_scale`` of its area (aspect ratio 3:4 to 4:3) resized back to the image size, with
    ``flip`` a horizontal flip half of the time, and brightness, contrast and saturation each
    scaled by a factor within 1 +- ``jitter``. No flip by default: a mirrored digit or letter
    is another one, or none."""

    crop_scale: tuple[float, float] = (0.6, 1.0)
    flip: bool = False
    jitter: float = 0.2

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 images (N, C, H, W) to augmented float images on the same 0-255 scale."""
        count, device = len(images), images.device

        def uniform(low: float, high: float) -> Tensor:  # one value per image
            return torch.empty(count, device=device).uniform_(low, high)

        area, aspect = uniform(*self.crop_scale), uniform(math.log(3 / 4), math.log(4 / 3)).exp()
        width, height = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
        flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if self.flip else torch.ones_like(area)
        # One affine map per image, from the output grid to its crop, in [-1, 1] coordinates.
        theta = torch.zeros(count, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 1, 1] = width * flip, height
        theta[:, 0, 2], theta[:, 1, 2] = uniform(-1, 1) * (1 - width), uniform(-1, 1) * (1 - height)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images.float(), grid, padding_mode="border", align_corners=False)
        if self.jitter:
            low, high = 1 - self.jitter, 1 + self.jitter
            images = images * uniform(low, high).view(-1, 1, 1, 1)  # brightness
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = (images - mean) * uniform(low, high).view(-1, 1, 1, 1) + mean  # contrast
            if images.shape[1] == 3:  # saturation: away from or towards the pixel's gray
                luma = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
                gray = (images * luma).sum(1, keepdim=True)
                images = (images - gray) * uniform(low, high).view(-1, 1, 1, 1) + gray
        return images.clamp(0, 255)
