"""Every picture is drawn with labctl's settings, whatever the user's matplotlibrc says."""

from __future__ import annotations

import io

import matplotlib

from labctl.plots import drawing


def test_a_users_latex_and_math_settings_never_reach_a_picture(monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    monkeypatch.setitem(matplotlib.rcParams, "text.usetex", True)  # as a user's matplotlibrc might
    with drawing():
        assert matplotlib.rcParams["text.usetex"] is False
        assert matplotlib.rcParams["text.parse_math"] is False
        figure = Figure()
        FigureCanvasAgg(figure)
        figure.add_subplot().set_title(r"$\input{/etc/passwd}$ \unbalanced{ $")  # text, not LaTeX nor math
        figure.savefig(io.BytesIO(), format="png")
    assert matplotlib.rcParams["text.usetex"] is True, "the user's settings are back after the drawing"
