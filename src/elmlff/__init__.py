"""elmlff: ensemble learning of machine-learning force fields."""

__version__ = "0.1.0"
