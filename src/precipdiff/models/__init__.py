"""Neural networks: the conditional DDPM++/EDM U-Net and its layers."""

from precipdiff.models.unet import UNet, UNetConfig, count_parameters

__all__ = ["UNet", "UNetConfig", "count_parameters"]
