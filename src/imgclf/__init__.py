"""Train and serve an image classifier as one SageMaker bring-your-own-container image."""

__version__ = "0.1.0"
