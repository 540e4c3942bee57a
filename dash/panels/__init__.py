"""One module per panel; each draws itself from a ``dash.state.Frame`` only."""
