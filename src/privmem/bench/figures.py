"""Where every benchmark's plot is drawn: a headless matplotlib figure saved as PNG."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def png(path: str, **figure_args):
    """A figure (``figure_args`` as for ``plt.figure``) laid out and written to ``path`` as
    PNG when the body ends, closed whatever happens.  ``path`` may be a temporary name
    without .png (outputs are written then renamed into place)."""
    import matplotlib

    matplotlib.use("Agg")                  # no display: CI, ssh, a pipe
    import matplotlib.pyplot as plt

    fig = plt.figure(**figure_args)
    try:
        yield fig
        fig.tight_layout()
        fig.savefig(path, dpi=110, format="png")
    finally:
        plt.close(fig)


__all__ = ["png"]
