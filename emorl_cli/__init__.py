"""emorl: EfficientMORL (Emami et al., ICML 2021) as an installable, tested toolkit."""

__version__ = "0.1.0"
