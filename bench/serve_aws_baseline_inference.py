"""The inference.py a user typically writes for AWS's PyTorch serving stack
(sagemaker-pytorch-inference on TorchServe): the baseline of bench_serve.py.

PIL decode, torchvision Resize/CenterCrop/Normalize, one image per request, float32.
"""
import io
import json
import os

import torch
import torchvision
from PIL import Image
from torchvision import transforms

transform = transforms.Compose([
    transforms.Resize(256),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
])


def model_fn(model_dir):
    with open(os.path.join(model_dir, "classes.json")) as f:
        classes = json.load(f)
    model = torchvision.models.resnet50(num_classes=len(classes))
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu"))
    return model.eval()


def input_fn(request_body, content_type):
    if content_type in ("image/jpeg", "image/png", "application/x-image"):
        image = Image.open(io.BytesIO(request_body)).convert("RGB")
        return transform(image).unsqueeze(0)
    raise ValueError(f"unsupported content type {content_type}")


def predict_fn(input_data, model):
    with torch.no_grad():
        return model(input_data)


def output_fn(prediction, accept):
    top = torch.softmax(prediction, dim=1)[0].topk(5)
    return json.dumps({"indices": top.indices.tolist(), "probabilities": top.values.tolist()})
