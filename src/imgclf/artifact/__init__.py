"""What training writes and serving reads: the model card, the network, the evaluation transform,
the OpenVINO copies and their checks. Imports nothing of the package but itself and names.py."""
