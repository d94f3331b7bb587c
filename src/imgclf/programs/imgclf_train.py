"""imgclf-train as a script file, for imgclf.train.toolkit: `torchrun ... imgclf_train.py` or `python imgclf_train.py`."""
from imgclf.train.job import cli

if __name__ == "__main__":
    cli()
