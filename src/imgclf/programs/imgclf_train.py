"""imgclf-train as a script file, for imgclf.toolkit: `torchrun ... imgclf_train.py` or `python imgclf_train.py`."""
from imgclf.train import cli

if __name__ == "__main__":
    cli()
