"""Layer 6: presentation. Plotly figures (`plots`), the HTML report (`report`), one module per
study's section of the paper report (`sweep_section`, `dynamics_section`, `patterns_section`,
`atlas_section`, `detection_report`) and the paper report that assembles them (`paper`). See
docs/architecture.md."""
