"""Hosting: the model server behind `docker run IMAGE serve` (SageMaker endpoints and batch transform).

    environment.py      SAGEMAKER_* and IMGCLF_* variables, read once
    errors.py           client errors that carry their HTTP status and a JSON reason
    decoder.py          request body -> RGB images, one function per content type
    handler.py          TorchServe-style handler: initialize, preprocess, inference, postprocess
    handler_service.py  the one class multi-model-server loads
    front.py            the port SageMaker talks to: /ping from the model's real state, the rest
                        passed to multi-model-server
    server.py           `imgclf-serve`: starts both, forwards SIGTERM
"""
