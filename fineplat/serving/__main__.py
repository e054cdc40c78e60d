"""`python -m fineplat.serving --base-model ... --port ...`: the serving pool as its own process
(what EmbeddedServingPool starts), without going through the top-level `fineplat` CLI."""

from fineplat.serving.cli import app

if __name__ == "__main__":
    app(prog_name="python -m fineplat.serving")
