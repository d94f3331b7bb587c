"""Programs as script files, the form that sagemaker-training's runners start (python or torchrun)."""
