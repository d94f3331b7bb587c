"""Drive the image with the SageMaker Python SDK: data, train, tune, deploy, invoke, delete, transform.

A thin layer over the SDK (v2): each module builds the SDK object for one step from the package's
own contracts (hyperparameter names, metric regexes, search space), and `cli` puts them behind
the `imgclf` command (shared options in `options`, one module per command under `commands/`).
Every step runs on AWS or, with a local `Target`, in SageMaker local mode (Docker Compose,
file:// data, no AWS account).
"""
