"""Hosting: the model server behind `docker run IMAGE serve` (SageMaker endpoints and batch transform).

    profiles.py         real-time, serverless, async, batch: each one's payload limit and timeout
    environment.py      SAGEMAKER_* and IMGCLF_* variables, read once
    errors.py           client errors that carry their HTTP status and a JSON reason
    sniffing.py         the content type of a body that names none, from its first bytes
    decoder.py          request body -> RGB images, one function per content type
    handler.py          TorchServe-style handler: initialize, preprocess, inference, postprocess
    runtime.py          the runners a worker can serve with (OpenVINO copies or torch)
    precision.py        IMGCLF_PRECISION: which runner, int8 only where this CPU's kernels agree
    torch_runner.py     the torch path, imported only when used (the CPU image has no torch)
    handler_service.py  the handler service: where a failure becomes a response or a dead worker
    mms_entry.py        the entry point multi-model-server calls: handler_service, its answers
                        framed around a decoding bug of MMS's frontend
    front.py            the port SageMaker talks to (aiohttp): /ping from the model's real state,
                        client faults answered, the rest passed to multi-model-server
    json_errors.py      the front's error answers, all JSON
    registration.py     multi-model POST /models: settings added, the model's folder checked
    spool.py            bodies too large for memory: from the front to the worker as a file
    privileges.py       started as root: stage the model, then become an unprivileged user
    server.py           `imgclf-serve`: starts both, drains and stops on SIGTERM
"""
