"""The ServerApp: securefl's SecureServer driving the rounds over the Grid."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # imported here: the SuperLink loads this module before a run starts
    from securefl.transport.flower.serverapp import run

    run(grid, dict(context.run_config), run_id=getattr(grid.run, "run_id", ""))
