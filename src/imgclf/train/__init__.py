"""The training job: the SageMaker contract, hyperparameters and recipes, data, the loop, checkpoints."""
