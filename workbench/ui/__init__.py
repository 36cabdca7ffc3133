"""Layer 7, the faces: ipywidgets panels (`widgets`, `detection_explorer`), the classroom app
(`classroom`) and the command line (`cli`). Loaded on first use: they import plotly and
ipywidgets. See docs/architecture.md."""
