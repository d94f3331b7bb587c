"""The module multi-model-server loads (`default_service_handler`): exactly one class, as MMS requires.

It plugs our handler into sagemaker-inference's handler service in place of its per-request
transformer (which would answer client errors with a 500 and a traceback, and cannot batch),
and is the one boundary where a failure becomes a response or a dead worker:

- the model fails to load: the worker exits, so MMS reports it unhealthy and `/ping` says 503
  (MMS itself would log the error and keep a worker without a model);
- an unexpected error in a batch: 500 with a JSON reason for each request in it.
"""
from __future__ import annotations

import json
import logging

from sagemaker_inference.default_handler_service import DefaultHandlerService

from .handler import JSON_TYPE, ImageClassifierHandler

log = logging.getLogger(__name__)


class HandlerService(DefaultHandlerService):
    def __init__(self):
        super().__init__(transformer=ImageClassifierHandler())

    @property
    def handler(self) -> ImageClassifierHandler:
        return self._service

    def initialize(self, context):
        try:
            self.handler.initialize(context)
        except Exception:
            log.exception("could not load the model from %s", context.system_properties.get("model_dir"))
            raise SystemExit(1)  # MMS swallows an Exception here and would serve without a model

    def handle(self, data, context):
        try:
            return self.handler.handle(data, context)
        except Exception as e:
            log.exception("inference failed")
            body = json.dumps({"error": "Internal Server Error", "message": f"{type(e).__name__}: {e}"})
            for i in range(len(data)):
                context.set_response_content_type(i, JSON_TYPE)
                context.set_response_status(500, "Internal Server Error", i)
            return [body] * len(data)
