"""The handler service that multi-model-server's worker runs (through mms_entry.py): sagemaker-inference's
`DefaultHandlerService` with our handler as its `Transformer`.

The transformer takes the place of sagemaker-inference's per-request one (which would answer client
errors with a 500 and a traceback, and cannot batch), and is the one boundary where a failure
becomes a response or a dead worker:

- the model fails to load: the worker exits, so MMS reports it unhealthy and `/ping` says 503
  (MMS itself would log the error and keep a worker without a model);
- an unexpected error in a batch: 500 for each request in it, with a fixed message and the
  request's id; the log line has the ids and the exception with its traceback.
"""
from __future__ import annotations

import logging

from sagemaker_inference.default_handler_service import DefaultHandlerService
from sagemaker_inference.transformer import Transformer

from .errors import internal_error_json, request_id_of
from .handler import JSON_TYPE, ImageClassifierHandler

log = logging.getLogger(__name__)


class ImageClassifierTransformer(Transformer):
    """`validate_and_initialize` loads the model once; `transform` answers a whole batch."""

    def __init__(self):
        super().__init__()
        self.handler = ImageClassifierHandler()

    def validate_and_initialize(self, model_dir=None, context=None):
        if self._initialized:
            return
        try:
            self.handler.initialize(context)
        except Exception:
            log.exception("could not load the model from %s", model_dir)
            raise SystemExit(1) from None  # MMS swallows an Exception here and would serve without a model
        self._initialized = True

    def transform(self, data, context):
        try:
            return self.handler.handle(data, context)
        except Exception as e:
            ids = [request_id_of(context.get_all_request_header(i) or {}, context.get_request_id(i))
                   for i in range(len(data))]
            log.error("inference failed (500) for request %s", ", ".join(ids), exc_info=e)
            for i in range(len(data)):
                context.set_response_content_type(i, JSON_TYPE)
                context.set_response_status(500, "Internal Server Error", i)
            return [internal_error_json(rid) for rid in ids]


class HandlerService(DefaultHandlerService):
    def __init__(self):
        super().__init__(transformer=ImageClassifierTransformer())

    @property
    def transformer(self) -> ImageClassifierTransformer:
        return self._service

    def initialize(self, context):
        # not DefaultHandlerService's, which also puts the artifact's code/ folder on PYTHONPATH: the
        # artifact is data, no code of it runs
        self._service.validate_and_initialize(model_dir=context.system_properties.get("model_dir"), context=context)
