"""Undercomplete autoencoder: a code smaller than the input, trained to reconstruct it."""

from __future__ import annotations

from . import METHODS
from .autoencoder import AutoencoderConfig, AutoencoderMethod


@METHODS.register("ae")
class Autoencoder(AutoencoderMethod):
    Config = AutoencoderConfig
