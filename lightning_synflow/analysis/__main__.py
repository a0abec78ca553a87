"""`python -m lightning_synflow.analysis`: the analysis command line (:mod:`lightning_synflow.analysis.cli`)."""

from lightning_synflow.analysis.cli import cli

if __name__ == "__main__":
    cli()
